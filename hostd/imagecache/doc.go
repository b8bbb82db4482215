// Package imagecache lets a host read a base disk image that lives on
// another host without copying it first.
//
// A seed host registers an image: Build cuts it into chunks and lists each
// chunk's sha256 in a Manifest, whose own sha256 (its ID) the coordinator
// keeps and hands to every other host. A host opens a Cache: a sparse data
// file the size of the image plus a persisted bitmap of the chunks it
// holds. A read of a chunk it lacks fetches it from its Sources (its
// ancestors in the coordinator's fan-out tree, nearest first, then other
// replicas), checks it against the manifest and keeps it, so the next
// read on this host, and every host below it in the tree, is served from
// here. A source that fails or serves a chunk that does not match is
// skipped for a while (the host re-parents to the next ancestor).
//
// Contract: a chunk is marked held only after its bytes matched the
// manifest and were written and synced; a manifest is accepted only if its
// sha256 is the ID the caller was given. Every read from a source is
// bounded (ChunkMax bytes, a deadline per attempt). ServeNBD exports a
// Cache read-only over the NBD protocol for local QEMUs. The package
// decides nothing about VMs or trees: hostd and the coordinator do.
package imagecache

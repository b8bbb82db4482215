// Package manifest is a checkpoint directory's manifest and the confined
// reading and copying of the files it names.
//
// Contract: Parse (so Read and Verify) accepts a manifest only if it has
// one state file (StateName), one file per disk of its spec which the
// spec's disk path names, and every name a plain name of the directory;
// OpenInDir opens such a name without following a symlink and only as a
// regular file; CopyVerified leaves dst only if it hashes to the
// manifest's digest. Every refusal wraps ErrChecksum. A manifest is
// trusted only once its signature verified, which is hostd's (sign.go):
// this package checks form and digests, not who wrote them.
package manifest

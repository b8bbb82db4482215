// Package hostd runs the VMs of one host: one QEMU per VM, driven over QMP,
// and executes the coordinator's steps on them. It decides nothing about
// jobs and rolls nothing back on its own: what happens next in an operation
// is coord/machine's to say.
//
// The parts that need no VM are subpackages, each with its contract in its
// doc.go; hostd re-exports their types under its own names (spec.go,
// steptypes.go, manifest.go, policy.go, errors.go) so that its API is
// unchanged:
//
//   - hostd/sentinel: hostd's sentinel errors (errors.go gives them their
//     wire codes).
//   - hostd/spec: the VM spec, parsed strictly and validated field by field.
//   - hostd/policy: what a spec may make QEMU open on this host (files,
//     qcow2 backing chains, host hardware, taps, QEMU binaries).
//   - hostd/step: the wire of the coordinator's steps (requests, one args
//     struct per kind, results) and the signed migration grant.
//   - hostd/manifest: a checkpoint's manifest and the confined reading and
//     hashed copying of the files it names.
//   - hostd/migstream: the migration stream's port range, the check of a
//     destination's stream address, and the TLS tunnel between hostds.
//   - hostd/qemu: one QEMU process: its command line (sandboxed), its
//     guest RAM file, start, adoption after a hostd restart, exit, stop,
//     kill, and the warm handover to a new QEMU on the same RAM.
//   - hostd/devices: passthrough devices: their QEMU definitions, the
//     host's pools, hot-plug over QMP.
//   - hostd/snapshot: a VM's state to and from a checkpoint's state file
//     through QEMU's migration stream: stop-and-save, the restore's
//     checked load, and a live save (arm, snapshot point, precopy or
//     background stream) whose file is synced and hashed before the
//     caller's manifest is written.
//
// The parts that hang off Host and VM, here:
//
//   - QEMU process supervision (process.go, ramfile.go, rejuvenate.go,
//     over hostd/qemu): which QEMU is a VM's current one, what the VM
//     records of it (PID, generation, RAM file); re-adopted, not
//     restarted, when hostd itself restarts; the RAM file is removed once
//     no QEMU of the VM needs it (stopped, killed, crashed, deleted), or
//     kept, cleared, for the next VM that boots, migrates in or is
//     restored; with a reserve the pool also makes cleared files of its
//     own, so the first VM to arrive finds one (rampool.go). RAM files
//     live on the host's tmpfs (shm_dir, /dev/shm by default; one with
//     huge pages gives guest RAM 2 MiB pages), in hostd's 0700 directory.
//   - Persisted state (layout.go, host.go's writeJSON): every VM's spec and
//     runtime state (leases included) live under Layout's state directory,
//     written through internal/atomicfile, so a crash leaves the old or the
//     new file; Layout is also what tools and tests read.
//   - Steps and leases (steps.go, fence.go, peerhold.go, localop.go, release.go):
//     typed, idempotent steps, each under an operation's lease; a lease
//     that expires releases the VM: a one-VM release operation of
//     coord/machine, driven here like a direct operation, undoes what the
//     vanished operation's steps may have left.
//   - Snapshot and stream (checkpoint.go, live.go, sign.go, migrate.go,
//     migtunnel.go, migtls.go, miguri.go): a checkpoint is a directory of
//     hashed files under a manifest this hostd signs, its state written by
//     hostd/snapshot; live.go says which live save and stream is whose VM's
//     and persists the stream in flight, lost if hostd restarts; a
//     migration is QEMU's stream, carried by hostd under TLS when
//     configured.
//   - Devices and the guest (devices.go over hostd/devices, guest.go,
//     guest_vsock.go): which passthrough devices a VM has unplugged and
//     which pool entries it holds; guestd is asked to cooperate and never
//     trusted.
//   - API (api.go, client.go, errors.go, peerauth.go, metrics.go): JSON over
//     HTTP (internal/jsonapi), on a root-only unix socket or mutual TLS;
//     every error wraps a sentinel of errors.go, which the client gets back.
package hostd

// Package coord is the coordinator: it operates jobs (named sets of VMs
// on several hosts) together, through the hostds that run them.
//
// # What it knows
//
//   - Hosts: each hostd's name and API address (its TLS certificate's
//     name, when the hostds authenticate each other).
//   - Jobs: their VMs and the host each runs on, updated when an operation
//     moves one.
//   - The checkpoint catalog: per checkpoint its status (in-progress,
//     complete, failed) and per VM its host, directory, digest and, for a
//     live checkpoint, its snapshot point. Complete means every VM's
//     artifacts were written, synced and checksummed.
//   - The journal: every operation, as coord/machine's Op and the host
//     addresses it started with, written before each step's actions go
//     out. A restarted coordinator drives every unfinished operation in
//     it to its end (it finishes or rolls back), then frees the job.
//
// All of it is in a Store (bbolt by default); every Put is durable when it
// returns. With etcd (store_etcd.go, ha.go) several replicas campaign and
// only the leader serves and drives operations; each of its writes is
// conditioned on its election key (its epoch), and the epoch travels with
// every step and lease renewal so hostds refuse a deposed leader.
//
// Besides operations it places VMs: consolidate.go gathers usage from the
// hostds and carries coord/placement's plan out as migrate operations;
// boot.go starts a template's clones on the hosts that hold it.
//
// # What it does
//
// An operation (checkpoint, restart, migrate, evacuate) holds its job: a
// second one on the same job is refused (ErrBusy) until the first ends.
// coord/machine decides every action and every undo; coord/run drives it.
// coord's executor sends each action as the hostd step of the same name
// (hostd/steps.go), with its arguments, and answers the machine with the
// step's result, or HostDown for a hostd that no longer answers; the one
// job-level action, RecordCheckpoint, is a catalog write. While the
// operation runs, coord renews the hostds' leases on its VMs.
//
// # What it never does
//
//   - Decide what happens next or what to undo: that is the machine's
//     alone (there is no second rollback path here).
//   - Touch a VM other than through a hostd step (or, outside operations,
//     hostd's create/stop/delete/status API).
//   - Go on without its journal: when a write fails, no further action is
//     sent and no lease renewed, so each hostd undoes what it holds paused
//     when its lease runs out; the job stays busy until then (ErrFailed,
//     wrapping run.ErrJournal).
//   - Run two copies of a VM: a restart is refused while any VM of the job
//     still runs.
package coord

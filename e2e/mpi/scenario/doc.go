// Package scenario is the MPI job's story on a test cluster: three hosts
// in network namespaces (a hostd each, mutual TLS), a coordinator, and
// examples/mpi (the Jacobi stencil) as a 4-rank job over two Debian VMs,
// taken through a checkpoint, the death of every VM, a restart from the
// checkpoint, the migration of one VM and a node alert that evacuates a
// host. Run plays it and returns what happened (a timeline, the pauses each
// rank reported, the network stall the job saw, both checksums).
//
// It is shared by e2e/mpi's TestMPIJobThroughOperations, which asserts on
// it, and by `make demo` (scripts/demo runs e2e/mpi's TestMPIDemo), which
// prints it for a human. Everything takes a testing.TB: the cluster is
// built with internal/testenv, torn down at the TB's cleanup.
package scenario

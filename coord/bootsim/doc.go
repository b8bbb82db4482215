// Package bootsim predicts how long N identical VMs take to be ready on H
// hosts when their image (or template) starts on one seed host, for three
// ways of getting its blocks to the VMs:
//
//   - Tree: each host opens the image through a copy-on-read cache fed
//     by its parent in a fan-out tree of degree d rooted at the seed; the
//     first read of a block on a host goes up the tree, later readers on
//     that host (and its children) read the host's copy.
//   - Copy: the whole image is copied from the seed to each host first;
//     VMs on a host start when its copy is complete and read locally.
//   - Central: every VM reads the blocks it needs from one NBD server on
//     the seed; nothing is cached on the hosts.
//
// It is a fluid simulation in fixed time steps: data moves as flows whose
// rates are shared max-min fairly under each host's NIC (what a host
// serves and what it fetches share one capacity), each NBD connection's
// throughput, and the seed's disk. A host (or VM) never holds more of the
// image than the node it reads from. Each VM goes through the per-VM
// phases measured on a real host (overlay creation, QEMU start, reading
// its read set, clone resume), each host starting Parallel VMs at a time
// as the coordinator does.
//
// The package is pure: no clock, no I/O. cmd/symvirt-sim boot runs it with
// the figures its calibration test measured.
package bootsim

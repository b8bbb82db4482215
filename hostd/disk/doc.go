// Package disk is the mechanics of a checkpoint's disks: the O(1) cut
// (each disk switched to a new qcow2 overlay by blockdev-snapshot, so the
// image under it is frozen at the cut while the VM runs on), storing a
// frozen image in a checkpoint (whole, or as a delta over the previous
// checkpoint's disk), flattening the running VM's chain (block-commit),
// assembling a restored disk from a checkpoint's chain, and merging a
// removed link into its successor.
//
// The frozen overlay is the incremental record: it holds exactly the
// clusters the guest wrote since the cut that created it, and it persists
// with the disk (no in-QEMU bitmap to lose on a QEMU restart). So after a
// checkpoint's copy the frozen layer is committed into the disk's root
// and the chain is root <- active overlay again: at most three layers,
// for as long as a copy runs.
//
// The frozen image is always copied into the checkpoint, never referenced
// in place even on the same file system: the checkpoint must outlive the
// VM's chain (whose layers are committed and removed), be signed over
// bytes nobody else writes, and be hashed, which reads it whole anyway.
// A delta is small, and the first copy is sparse (qemu-img convert).
//
// hostd decides which layer is which (hostd/disk*.go); this package runs
// qemu-img and QMP.
package disk

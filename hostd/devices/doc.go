// Package devices is a VM's passthrough devices: their QEMU definitions,
// the host pools they draw from, and hot-plugging them over QMP.
//
// Contract: a passthrough device sits on a pcie-root-port of its own
// ("rp-" + its id), which stays on QEMU's command line while the device is
// unplugged, so it can be plugged again at the same place. Allocate gives
// every pooled device a pool entry no other VM of the host holds, keeping
// the one a device already has, and fails with sentinel.ErrNoDevice when a
// pool is exhausted; a pool entry's properties override the spec's. The
// package keeps no state: which devices are unplugged and which entries a
// VM holds is the caller's to persist.
package devices

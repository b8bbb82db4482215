package hostd

import (
	"context"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// checkQEMU logs the version of the configured QEMU and refuses one older
// than qemu.MinMajor.MinMinor. A binary that does not run is only warned
// about: hostd still serves the VMs it re-adopts, and each start checks
// the version again from QMP's greeting (qemu.Start).
func (h *Host) checkQEMU() error {
	v, err := qemu.BinaryVersion(context.Background(), h.cfg.QEMU)
	if err != nil {
		h.log.Warn("qemu version unknown: VMs cannot start until the binary runs", "qemu", h.cfg.QEMU, "err", err)
		return nil
	}
	if err := qemu.CheckVersion(h.cfg.QEMU, v); err != nil {
		return err
	}
	h.log.Info("qemu", "binary", h.cfg.QEMU, "version", v.String(), "package", v.Package)
	if h.cfg.liveAuto && h.cfg.Accel == "tcg" && v.QEMU.Major >= exactTCGPrecopyMajor {
		h.cfg.LiveMode = "precopy"
	}
	if h.cfg.Accel == "tcg" && v.QEMU.Major < exactTCGPrecopyMajor {
		h.log.Warn("under TCG this QEMU's precopy can lose guest writes: a live migration (or a live checkpoint with live_mode precopy) can leave its copy of the guest corrupt; symvirt migrate --live=false moves a VM stopped",
			"qemu", v.String(), "live_mode", h.cfg.LiveMode)
	}
	h.log.Info("live checkpoints", "live_mode", h.cfg.LiveMode, "auto", h.cfg.liveAuto, "point_realtime", *h.cfg.LivePointRealtime)
	return nil
}

// defaultLivePointRealtime is live_point_realtime unless the config says:
// off, since a VM whose vCPUs keep busy takes a core per real-time thread,
// and where that is all of them hostd, which takes the point (the fence,
// the drain of the copy), waits out the bound (README).
const defaultLivePointRealtime = false

// exactTCGPrecopyMajor is the first QEMU measured here whose precopy
// images under TCG hold the guest's RAM exactly and pause the guest less
// than a background snapshot: live_mode auto takes precopy from it on.
// QEMU 7.2's dirty-bitmap sync clears the migration bits without
// resetting TCG's TLB entries, so writes through an entry the vCPU keeps
// go unrecorded; the fix is in QEMU 9.0 (commit 03bfc2188f), which no
// test here has run (TestPrecopyImageExactWhereAutoTakesIt, README).
const exactTCGPrecopyMajor = 10

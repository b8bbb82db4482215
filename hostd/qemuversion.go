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
	h.log.Info("live checkpoints", "live_mode", h.cfg.LiveMode, "auto", h.cfg.liveAuto, "point_realtime", *h.cfg.LivePointRealtime)
	return nil
}

// defaultLivePointRealtime is live_point_realtime unless the config says:
// off, since a VM whose vCPUs keep busy takes a core per real-time thread,
// and where that is all of them hostd, which takes the point (the fence,
// the drain of the copy), waits out the bound (README).
const defaultLivePointRealtime = false

// exactTCGPrecopyMajor is the first QEMU whose precopy images under TCG
// held the guest's RAM exactly (precopy_image_vs_ram: 0 of 40 rounds
// differing on 10.0.2, against 1 to 9 of 20 on 7.2) and paused the guest
// less than a background snapshot (3 to 5 ms against 13 to 26 ms at 256
// MiB and 1 GiB): live_mode auto takes precopy from it on.
const exactTCGPrecopyMajor = 10

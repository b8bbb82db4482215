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
	return nil
}

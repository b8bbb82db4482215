package qemu

import (
	"context"
	"os"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// TakeOver moves the device state of old, a stopped QEMU of the same VM,
// into p, started incoming on the RAM file old maps (OpenWarmRAM): RAM is
// not copied (x-ignore-shared), it is in place already. On failure old
// still holds the VM; either way, later migrations carry RAM again.
func (p *Process) TakeOver(ctx context.Context, old *Process) (int64, error) {
	n, err := warmTransfer(ctx, old.Mon, p.Mon)
	off := map[string]bool{"x-ignore-shared": false}
	if err != nil {
		old.Mon.MigrateSetCapabilities(context.WithoutCancel(ctx), off)
		return 0, err
	}
	p.Mon.MigrateSetCapabilities(ctx, off)
	return n, nil
}

// warmTransfer streams a stopped QEMU's device state (RAM is skipped:
// x-ignore-shared) into the new one through a pipe.
func warmTransfer(ctx context.Context, old, next *qmp.Client) (int64, error) {
	for _, mon := range []*qmp.Client{next, old} {
		if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
			return 0, err
		}
	}
	if err := old.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		return 0, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	err = next.GetFD(ctx, "symvirt-warm-in", r)
	r.Close()
	if err == nil {
		err = old.GetFD(ctx, "symvirt-warm-out", w)
	}
	w.Close()
	if err == nil {
		err = next.MigrateIncoming(ctx, "fd:symvirt-warm-in")
	}
	if err == nil {
		err = old.Migrate(ctx, "fd:symvirt-warm-out")
	}
	if err != nil {
		return 0, err
	}
	info, err := old.WaitMigration(ctx, 5*time.Millisecond, nil)
	if err != nil {
		old.MigrateCancel(context.WithoutCancel(ctx))
		return 0, err
	}
	if _, err := next.WaitMigration(ctx, 5*time.Millisecond, nil); err != nil {
		return 0, err
	}
	return info.RAM.Transferred, nil
}

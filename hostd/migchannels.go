package hostd

import (
	"context"
	"fmt"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/symvirt/symvirt/qmp"
)

// A live migration's RAM goes over several connections (QEMU's multifd)
// when both ends agree: the source offers its count in the incoming
// request, the destination answers the count it set up (none from a
// hostd that does not know the field: one stream). Multifd needs QEMU 9
// at both ends (its zero pages are found by the channels and never sent,
// so the destination's RAM file stays sparse and needs no populate) and
// QEMU's own sockets: under migration TLS the stream goes through hostd's
// tunnel (migstream), one authenticated connection, so one stream.

const (
	defaultMigrationChannels = 2 // QEMU's own default multifd-channels
	maxMigrationChannels     = 16
	multifdMinMajor          = 9
)

// multifdQEMU reports whether a QEMU of version v migrates over
// channels.
func multifdQEMU(v goqmp.Version) bool { return v.QEMU.Major >= multifdMinMajor }

// channelsHere is how many channels this host's side of a migration of
// a QEMU with monitor mon can use: 1 for one stream.
func (h *Host) channelsHere(mon *qmp.Client) int {
	if h.cfg.migrationTLS() || !multifdQEMU(mon.Version()) || h.cfg.MigrationChannels < 2 {
		return 1
	}
	return h.cfg.MigrationChannels
}

// offerChannels is the count a source asks its destination for: 0 when
// it can send one stream only (an older destination answers 0 too).
func (vm *VM) offerChannels() int {
	mon, err := vm.monitor()
	if err != nil {
		return 0
	}
	if n := vm.h.channelsHere(mon); n > 1 {
		return n
	}
	return 0
}

// acceptChannels sets up a destination's QEMU for the channels offered
// (as many as this host allows) and returns their count, 0 for one
// stream. Called before migrate-incoming.
func (vm *VM) acceptChannels(ctx context.Context, mon *qmp.Client, offered int) (int, error) {
	n := min(offered, vm.h.channelsHere(mon))
	if n < 2 {
		return 0, nil
	}
	if err := setChannels(ctx, mon, n); err != nil {
		return 0, fmt.Errorf("vm %q: incoming over %d channels: %w", vm.name, n, err)
	}
	return n, nil
}

// setChannels turns multifd on with n channels.
func setChannels(ctx context.Context, mon *qmp.Client, n int) error {
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"multifd": true}); err != nil {
		return err
	}
	return mon.MigrateSetParameters(ctx, map[string]any{"multifd-channels": n})
}

// teardownWait bounds the wait for QEMU's cleanup of a failed multifd
// migration (its channels' threads are joined there).
const teardownWait = 30 * time.Second

// settleChannels turns multifd off again in a QEMU that migrated (or
// tried to) over channels, so that its later saves (one fd) work.
func (vm *VM) settleChannels(ctx context.Context, mon *qmp.Client) error {
	start := timeNow()
	waited, err := settleMultifd(ctx, mon)
	if waited {
		vm.logPhase("migrate_teardown_wait", timeNow().Sub(start))
	}
	if err != nil {
		return fmt.Errorf("vm %q: multifd left on: %w", vm.name, err)
	}
	return nil
}

// settleMultifd turns multifd off if it is on, but only once QEMU has
// torn its last migration down: QEMU 10.0 reads the capability again in
// that cleanup, and a multifd turned off before it leaves the channels
// registered and aborts QEMU (yank.c:107, qmp.WaitMigrationTornDown). If
// the cleanup does not end within teardownWait the capability is left
// on, never changed under it. waited: multifd was on.
func settleMultifd(ctx context.Context, mon *qmp.Client) (waited bool, err error) {
	caps, err := mon.MigrationCapabilities(ctx)
	if err != nil || !caps["multifd"] {
		return false, err
	}
	wctx, cancel := context.WithTimeout(ctx, teardownWait)
	defer cancel()
	if err := mon.WaitMigrationTornDown(wctx, 2*time.Millisecond); err != nil {
		return true, err
	}
	return true, mon.MigrateSetCapabilities(ctx, map[string]bool{"multifd": false})
}

// checkChannels refuses a destination's answer of more channels than
// this source can send (it offered fewer, or none).
func (vm *VM) checkChannels(mon *qmp.Client, n int) error {
	if n == 0 {
		return nil
	}
	if here := vm.h.channelsHere(mon); n < 2 || here < 2 || n > here {
		return fmt.Errorf("vm %q: destination answered %d channels, this side sends %d: %w", vm.name, n, here, ErrMigration)
	}
	return nil
}

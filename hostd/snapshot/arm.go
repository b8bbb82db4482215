package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/qmp"
)

// ErrUnsupported: this QEMU or kernel cannot take a background snapshot,
// or the directory cannot reserve a stream's room; the caller falls back
// to stop-and-save and says why.
var ErrUnsupported = errors.New("live checkpoint unsupported")

// FD is QEMU's name for a live save's state file until its stream starts.
const FD = "symvirt-live"

// Armed is a live save made ready while the VM runs: QEMU's MIGRATION
// events on, its stream's bandwidth set, and the state file open with its
// room reserved and handed to QEMU (which a background snapshot writes
// into).
type Armed struct {
	mon  *qmp.Client
	dir  string
	f    *os.File
	used bool // a stream took it
}

// Arm prepares a live save of a VM with ram bytes of RAM into dir, which
// exists and is empty. bandwidth caps the stream (bytes/s; 0: none): a cap
// makes the guest's page faults wait out QEMU's rate-limiting windows, a
// stall the operator may trade for disk bandwidth. On error dir is gone.
func Arm(ctx context.Context, mon *qmp.Client, dir string, ram, bandwidth int64) (*Armed, error) {
	a := &Armed{mon: mon, dir: dir}
	// The sooner hostd hears that a running VM's copy stopped it, the
	// sooner the VM runs again.
	err := mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true})
	if err == nil {
		a.f, err = os.OpenFile(filepath.Join(dir, manifest.StateName), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	}
	if err == nil {
		err = reserve(a.f, bound(ram))
	}
	if err == nil {
		err = mon.GetFD(ctx, FD, a.f)
	}
	if bandwidth <= 0 {
		bandwidth = maxBandwidth
	}
	if err == nil {
		err = mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": bandwidth})
	}
	if err != nil {
		a.Disarm()
		return nil, fmt.Errorf("arm live checkpoint: %w", err)
	}
	return a, nil
}

// Dir is the directory the save writes into.
func (a *Armed) Dir() string { return a.dir }

// Disarm undoes an arm no stream took: its directory goes.
func (a *Armed) Disarm() {
	if !a.used {
		os.RemoveAll(a.dir)
		cleanup(func(ctx context.Context) error { return a.mon.CloseFD(ctx, FD) })
	}
	a.end()
}

// end closes the file and turns background-snapshot off, so that a later
// migration is a migration.
func (a *Armed) end() {
	if a.f != nil {
		a.f.Close()
	}
	cleanup(func(ctx context.Context) error {
		return a.mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": false})
	})
}

// bound is the most a stream of ram bytes of RAM writes: every page with
// its header, the device state, and slack.
func bound(ram int64) int64 { return ram + ram/256 + 64<<20 }

// reserve allocates n bytes for f, so that writing them cannot fail for
// want of room.
func reserve(f *os.File, n int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, n)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w: no room can be reserved for the stream in %s (no fallocate there)", ErrUnsupported, filepath.Dir(f.Name()))
	case err != nil:
		return fmt.Errorf("reserve %d MiB for the live stream in %s: %w", n>>20, f.Name(), err)
	}
	return nil
}

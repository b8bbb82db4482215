package hostd

import (
	"context"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// populateChunk is how much of the RAM file one madvise populates: small
// enough to stop soon when the migration that needs it ends.
const populateChunk = 32 << 20

// populateForMigration turns populateRAM on (benches compare without).
var populateForMigration = true

// populateRAM allocates every page of the VM's shared RAM file on
// /dev/shm, from its end back, until ctx ends: a migration's QEMU reads
// every page of guest RAM (the source to send it, the destination to see
// whether a zero page needs clearing), and a tmpfs page that was never
// written is allocated and zeroed by that read, one fault a page (a
// shared mapping has no zero page). Populating the file here costs about
// half as much a page and leaves QEMU pages its faults map sixteen at a
// time (measured here: 1 GiB of holes read through a mapping 1.1–1.4 s,
// populated 0.6 s, then read 0.08 s); it runs beside QEMU, on another
// core where one is idle, going down from the end while QEMU goes up
// from the start, and never writes guest memory (MADV_POPULATE_WRITE only
// faults pages in), so it is safe while QEMU writes the same file. Best effort: an error leaves the work to
// QEMU's faults. It returns how many bytes it populated.
func (vm *VM) populateRAM(ctx context.Context) (int64, error) {
	s := vm.Spec()
	if !populateForMigration || !s.UsesSharedMemory() || s.HugePages {
		return 0, nil
	}
	f, err := vm.sharedRAM()
	if f == nil || err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if allocated(f.Name(), st.Size()) {
		return 0, nil
	}
	return populateFile(ctx, f, st.Size())
}

// populateFile populates size bytes of f's shared mapping, a chunk at a
// time from the end.
func populateFile(ctx context.Context, f *os.File, size int64) (int64, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(mem)
	done := int64(0)
	for end := size; end > 0 && ctx.Err() == nil; end -= populateChunk {
		lo := max(0, end-populateChunk)
		if err := unix.Madvise(mem[lo:end], unix.MADV_POPULATE_WRITE); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return done, errors.New("kernel without MADV_POPULATE_WRITE (5.14)")
			}
			return done, err
		}
		done += end - lo
	}
	return done, nil
}

// populateInBackground runs populateRAM until ctx ends, logging what it
// did (a "bg_" phase: beside the operation, not a part of its time);
// done is called when it ends.
func (vm *VM) populateInBackground(ctx context.Context, done context.CancelFunc, side string) {
	go func() {
		defer done()
		start := timeNow()
		n, err := vm.populateRAM(ctx)
		if err != nil {
			vm.log.Warn("guest RAM not populated ahead of the migration", "side", side, "err", err)
		}
		if n > 0 {
			vm.logPhase("bg_populate_ram_"+side, timeNow().Sub(start))
			vm.log.Info("guest RAM populated for the migration", "side", side, "bytes", n, "took", timeNow().Sub(start))
		}
	}()
}

// populateUntilExit populates a destination's RAM file for its incoming
// stream, for at most d (the stream's own wait), or until its QEMU exits.
func (vm *VM) populateUntilExit(ctx context.Context, d time.Duration) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	exited := vm.exited()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-pctx.Done():
		}
	}()
	vm.populateInBackground(pctx, cancel, "dest")
}

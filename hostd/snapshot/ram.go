package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"github.com/symvirt/symvirt/qmp"
	"golang.org/x/sys/unix"
)

// A VM whose RAM is a shared file (on /dev/shm) is saved as its device
// state without RAM (QEMU's x-ignore-shared) and a copy of the file that
// hostd makes itself: QEMU would read every page of the mapping, and a
// page of a tmpfs file that was never written is allocated by that read
// (anonymous memory maps the zero page instead), which costs a save a
// second or more per GiB of idle guest. hostd reads only what is not a
// hole, and writes it sparse.

// SaveShared saves a stopped VM whose RAM is the shared file ram into
// dir: its device state into StateName (without RAM) and its RAM into
// RAMName, the RAM file copied while QEMU writes the state (QEMU neither
// reads nor writes guest RAM in a stream without it). Either way QEMU
// carries RAM again in its next migration.
func SaveShared(ctx context.Context, mon *qmp.Client, ram *os.File, dir string) ([]manifest.FileDigest, SaveTimes, error) {
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
		return nil, SaveTimes{}, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var copied chan ramSaved
	if !SaveByRead {
		copied = saveRAMBeside(rctx, ram, dir)
	}
	state, times, err := SaveTimed(ctx, mon, filepath.Join(dir, manifest.StateName))
	if rerr := carryRAM(ctx, mon); err == nil {
		err = rerr
	}
	if err != nil {
		cancel()
	} else if copied == nil { // the bench's path before: one after the other
		copied = saveRAMBeside(rctx, ram, dir)
	}
	if copied == nil {
		return nil, times, err
	}
	waited := time.Now()
	r := <-copied // before any return: nothing writes in dir after
	times.RAM, times.RAMWait, times.Sync = r.took, time.Since(waited), times.Sync+r.sync
	return []manifest.FileDigest{state, r.fd}, times, errors.Join(err, r.err)
}

// ramSaved is SaveRAM's result, and how long its copy took.
type ramSaved struct {
	fd         manifest.FileDigest
	took, sync time.Duration
	err        error
}

// saveRAMBeside runs SaveRAM of ram into dir on a goroutine of its own.
func saveRAMBeside(ctx context.Context, ram *os.File, dir string) chan ramSaved {
	copied := make(chan ramSaved, 1)
	go func() {
		start := time.Now()
		var r ramSaved
		r.fd, r.sync, r.err = SaveRAM(ctx, ram, filepath.Join(dir, manifest.RAMName))
		r.took = time.Since(start) - r.sync
		copied <- r
	}()
	return copied
}

// carryRAM turns x-ignore-shared off again.
func carryRAM(ctx context.Context, mon *qmp.Client) error {
	return mon.MigrateSetCapabilities(context.WithoutCancel(ctx), map[string]bool{"x-ignore-shared": false})
}

// SaveRAM copies the RAM file ram of a stopped VM into path, a new file,
// sparse (holes and chunks of zeros are not written), hashing it
// (manifest.SparseDigest) on the way; it returns how long the final
// fsync took.
func SaveRAM(ctx context.Context, ram *os.File, path string) (manifest.FileDigest, time.Duration, error) {
	fd := manifest.FileDigest{Name: filepath.Base(path), Role: "ram"}
	st, err := ram.Stat()
	if err != nil {
		return fd, 0, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fd, 0, err
	}
	defer f.Close()
	if err := f.Truncate(st.Size()); err != nil {
		return fd, 0, err
	}
	c, unmap, err := saveCopy(ram, f, st.Size())
	if err != nil {
		return fd, 0, err
	}
	err = c.run(ctx)
	unmap()
	if err == nil {
		err = sameSize(ram, st.Size())
	}
	if err != nil {
		return fd, 0, err
	}
	start := time.Now()
	if err := errors.Join(f.Sync(), f.Close(), atomicfile.SyncDir(filepath.Dir(path))); err != nil {
		return fd, 0, err
	}
	fd.Size, fd.SHA256, fd.Chunks = st.Size(), c.sums.Sum(), c.sums.Hash()
	return fd, time.Since(start), nil
}

// allocated reports whether all of f's size bytes are allocated.
func allocated(f *os.File, size int64) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Blocks*512 >= size
}

// sameSize refuses a RAM file whose size is no longer size: cut while
// copied, its end read as holes.
func sameSize(f *os.File, size int64) error {
	st, err := f.Stat()
	if err == nil && st.Size() != size {
		err = fmt.Errorf("%s is %d bytes, %d when its copy began: %w", f.Name(), st.Size(), size, sentinel.ErrRAMFile)
	}
	return err
}

// LoadRAM fills dst, the RAM file of a QEMU waiting for its state
// (incoming, paused), with the checkpoint's RAM file src: dst gets src's
// chunks that are not zeros, hashed as they are read; unless they are
// want's, it fails with ErrChecksum (the caller kills that QEMU: its
// vCPUs never ran). Unless zero says dst held only zeros when that QEMU
// started, what dst holds goes first (emptied, or, all allocated, cleared
// where src has zeros).
//
// zero relies on a QEMU started with -incoming writing no guest RAM
// before its state arrives: it leaves ROM contents in RAM to the stream
// (and a local migration with x-ignore-shared, whose source still runs on
// the same RAM, depends on that too).
func LoadRAM(ctx context.Context, src, dst *os.File, want manifest.FileDigest, zero bool) error {
	st, err := dst.Stat()
	if err != nil {
		return err
	}
	if st.Size() != want.Size {
		return fmt.Errorf("%s: the checkpoint's RAM is %d bytes, the vm's %d: %w", src.Name(), want.Size, st.Size(), sentinel.ErrChecksum)
	}
	if st, err = src.Stat(); err != nil {
		return err
	}
	if st.Size() != want.Size {
		return fmt.Errorf("%s is %d bytes, its signed manifest says %d: %w", src.Name(), st.Size(), want.Size, sentinel.ErrChecksum)
	}
	c, err := loadCopy(src, dst, want)
	if err != nil {
		return err
	}
	if zero {
		return c.load(ctx, src, want)
	}
	// A file all allocated (from the host's pool) is kept so: each chunk
	// the checkpoint has no data for is cleared where it is not zeros.
	// Another is emptied first.
	if c.clearSkipped = allocated(dst, want.Size); c.clearSkipped {
		mem, err := unix.Mmap(int(dst.Fd()), 0, int(want.Size), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map %s: %w", dst.Name(), err)
		}
		defer unix.Munmap(mem)
		c.dstMem = mem
	} else if err := unix.Fallocate(int(dst.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, want.Size); err != nil {
		return fmt.Errorf("empty %s: %w", dst.Name(), err)
	}
	return c.load(ctx, src, want)
}

// load runs the copy and checks what it read against want.
func (c sparseCopy) load(ctx context.Context, src *os.File, want manifest.FileDigest) error {
	if err := c.run(ctx); err != nil {
		return err
	}
	if got := c.sums.Sum(); got != want.SHA256 {
		return fmt.Errorf("%s as read (sha256 chunks %s) does not match its signed manifest (%s): %w", src.Name(), got, want.SHA256, sentinel.ErrChecksum)
	}
	return nil
}

// SharedRAM is a checkpoint's RAM file (Src, its digest Want) for a QEMU
// whose RAM is the shared file Dst.
type SharedRAM struct {
	Src, Dst *os.File
	Want     manifest.FileDigest
	// DstZero: Dst held only zeros when its QEMU started (see LoadRAM).
	DstZero bool
}

// LoadShared loads a checkpoint SaveShared wrote into a QEMU waiting for
// its state (incoming, paused): its RAM first, checked (LoadRAM), then its
// device state, checked (Load), without RAM.
func LoadShared(ctx context.Context, mon *qmp.Client, state *os.File, want manifest.FileDigest, ram SharedRAM, progress func(qmp.MigrationInfo)) error {
	if err := LoadRAM(ctx, ram.Src, ram.Dst, ram.Want, ram.DstZero); err != nil {
		return err
	}
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
		return err
	}
	err := Load(ctx, mon, state, want, progress)
	if rerr := carryRAM(ctx, mon); err == nil {
		err = rerr
	}
	return err
}

package snapshot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"github.com/symvirt/symvirt/qmp"
)

// QEMU's names of the descriptors hostd hands it.
const (
	saveFD = "symvirt-save"
	loadFD = "symvirt-load"
)

// maxBandwidth lifts QEMU's default cap (32 MiB/s, for live migration):
// a checkpoint uses the disk's full speed.
const maxBandwidth = int64(64) << 30

// poll is how often QEMU is asked how its migration goes (its MIGRATION
// events wake the wait sooner).
const poll = 50 * time.Millisecond

// SaveTimes is where a Save's time went.
type SaveTimes struct {
	Stream time.Duration // from the migrate command to QEMU's end of stream, all written and hashed
	RAM    time.Duration // a shared RAM file's copy (SaveShared), all written and hashed
	// RAMWait is how long the save waited for that copy after the state
	// was written (it runs beside it).
	RAMWait time.Duration
	Sync    time.Duration // fsync of the files and their directory
}

// Save writes the migration stream of a stopped VM into path, a new file,
// through a pipe: hostd hashes and syncs what QEMU wrote, and QEMU opens
// no file.
func Save(ctx context.Context, mon *qmp.Client, path string) (manifest.FileDigest, error) {
	fd, _, err := SaveTimed(ctx, mon, path)
	return fd, err
}

// SaveTimed is Save, saying where its time went.
func SaveTimed(ctx context.Context, mon *qmp.Client, path string) (fd manifest.FileDigest, times SaveTimes, err error) {
	fd = manifest.FileDigest{Name: filepath.Base(path), Role: "state"}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fd, times, err
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fd, times, err
	}
	defer r.Close()
	widen(w)
	err = mon.GetFD(ctx, saveFD, w)
	w.Close()
	if err == nil {
		err = setUp(ctx, mon)
	}
	if err != nil {
		return fd, times, err
	}
	var sum string
	copied := make(chan error, 1)
	// A write error (a full disk) ends the wait for QEMU at once: it would
	// block on the pipe until ctx ends.
	wctx, stopWait := context.WithCancelCause(ctx)
	defer stopWait(nil)
	go func() {
		var err error
		fd.Size, sum, err = hashedCopy(&writeback{f: f}, r)
		if errors.Is(err, os.ErrClosed) {
			err = nil // by fail: not a cause
		} else if err != nil {
			err = fmt.Errorf("write %s: %w", path, err)
			stopWait(err)
		}
		copied <- err
	}()
	fail := func(err error) (manifest.FileDigest, SaveTimes, error) {
		r.Close()
		cause := <-copied // first: no space left, say
		return fd, times, cmp.Or(cause, err)
	}
	start := time.Now()
	if err := mon.Migrate(ctx, "fd:"+saveFD); err != nil {
		cleanup(func(ctx context.Context) error { return mon.CloseFD(ctx, saveFD) })
		return fail(err)
	}
	if _, err := mon.WaitMigration(wctx, poll, nil); err != nil {
		cleanup(mon.MigrateCancel)
		return fail(err)
	}
	// QEMU closes its end when the stream is complete, which ends the copy.
	select {
	case err = <-copied:
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	times.Stream = time.Since(start)
	if err == nil {
		err = errors.Join(f.Sync(), f.Close(), atomicfile.SyncDir(filepath.Dir(path)))
	}
	times.Sync = time.Since(start) - times.Stream
	fd.SHA256 = sum
	return fd, times, err
}

// setUp readies QEMU for a save or load at the disk's speed, its end
// reported by a MIGRATION event (without the capability, QEMU sends none
// and the wait would see the end only at its next poll).
func setUp(ctx context.Context, mon *qmp.Client) error {
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		return err
	}
	return mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": maxBandwidth})
}

// Load feeds the state file f to a QEMU started with -incoming defer (and
// -S: it stays paused) through a pipe, hashing exactly the bytes QEMU
// takes; unless they are want's, it fails with ErrChecksum.
func Load(ctx context.Context, mon *qmp.Client, f *os.File, want manifest.FileDigest, progress func(qmp.MigrationInfo)) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer w.Close()
	widen(w)
	err = mon.GetFD(ctx, loadFD, r)
	r.Close()
	if err == nil {
		err = mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true})
	}
	if err != nil {
		return err
	}
	done := make(chan fed, 1)
	go func() {
		res := feed(f, w)
		w.Close() // QEMU sees the stream's end
		done <- res
	}()
	err = mon.MigrateIncoming(ctx, "fd:"+loadFD)
	if err == nil {
		_, err = mon.WaitMigration(ctx, poll, progress)
	}
	// QEMU reads no more: a feeder still writing (what follows the
	// stream's end, or after an error) stops and hashes the rest.
	w.Close()
	return (<-done).verdict(f.Name(), want, err)
}

// fed is what feed read and what of it went into QEMU's pipe.
type fed struct {
	read, sent int64
	sum        string // sha256 of all read
	readErr    error
	sendErr    error
}

// TestHookStateSent, when set (tests only), runs once after the first
// chunk of a state went to QEMU: a test changes the file there, as an
// attacker would while a restore runs.
var TestHookStateSent func()

// feed copies f to w, hashing it. It reads f to its end even when w fails
// (QEMU stopped reading), so that the verdict can tell a changed file from
// a QEMU error.
func feed(f *os.File, w io.Writer) fed {
	var res fed
	h := newBgHash()
	for {
		buf := h.buf()
		n, err := f.Read(buf)
		if n > 0 {
			h.add(buf[:n])
			res.read += int64(n)
			if res.sendErr == nil {
				m, werr := w.Write(buf[:n])
				res.sent += int64(m)
				res.sendErr = werr
				if hook := TestHookStateSent; hook != nil && res.sent == int64(m) {
					hook()
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				res.readErr = err
			}
			break
		}
	}
	res.sum = h.sum()
	return res
}

// verdict: a state file that is not the wanted one is ErrChecksum,
// whatever QEMU said of it; else QEMU's error; else QEMU must have taken
// it whole.
func (res fed) verdict(path string, want manifest.FileDigest, qemuErr error) error {
	if res.readErr != nil {
		return fmt.Errorf("read %s: %w", path, res.readErr)
	}
	if res.read != want.Size || res.sum != want.SHA256 {
		qemu := "QEMU had loaded it: the vm is killed before it ran"
		if qemuErr != nil {
			qemu = "QEMU: " + qemuErr.Error()
		}
		return fmt.Errorf("%s as read (%d bytes, sha256 %s) does not match its signed manifest (%d bytes, sha256 %s) (%s): %w",
			path, res.read, res.sum, want.Size, want.SHA256, qemu, sentinel.ErrChecksum)
	}
	if qemuErr != nil {
		return qemuErr
	}
	if res.sent != res.read {
		return fmt.Errorf("qemu took %d of the %d bytes of %s (%v): %w", res.sent, res.read, path, res.sendErr, sentinel.ErrChecksum)
	}
	return nil
}

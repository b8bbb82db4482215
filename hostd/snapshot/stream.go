package snapshot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/qmp"
)

// A live save copies a VM one of two ways:
//
// Precopy (a running VM; the default under KVM): QEMU copies the VM's
// memory while it runs, as a migration does, then stops it for the last
// pages and the devices' state, the snapshot point, and hostd runs it
// again. The pause does not grow with memory (3-10 ms here at 256 MiB to
// 2 GiB): no write-protection, no write ever waiting for the stream. Its
// price is time: the point comes at the end of the copy.
//
// Background (the default under TCG, and always for a stopped VM): QEMU's
// background-snapshot saves the devices, write-protects all guest RAM
// through userfaultfd and runs the VM again, while its memory, as it was
// at that instant, streams on. QEMU 7.2 write-protects inside the pause
// (16-45 ms for 2 GiB in /dev/shm here), and after it every first write of
// the guest to a page waits until QEMU's migration thread has saved that
// page, so anything that slows its writes stretches the guest's stalls.
// It writes straight into the reserved file: no pipe, no rate limit
// (which would park faults for up to a window). QEMU 7.2 must never meet
// a write error in one: it fails the migration without lifting the write
// protection and the guest's vCPUs hang for good (a full tmpfs froze the
// guest here), hence the reservation at Arm.
//
// Why not precopy under TCG: QEMU 7.2's TCG dirty tracking lets guest
// writes escape a precopy (hostd's TestBenchPrecopyImage: 2 of 20 images
// differed from the guest's RAM at their point, and a job restored from
// one hung). Under KVM the dirty log is the kernel's.

// poll is how often QEMU is asked how its migration goes (its MIGRATION
// events wake the wait sooner).
const poll = 50 * time.Millisecond

// Options of a live save's stream.
type Options struct {
	// PID is the VM's QEMU process, whose threads are reniced.
	PID int
	Log *slog.Logger
	// Cut (Precopy) runs while QEMU holds the VM stopped at its snapshot
	// point, before it runs again; its error fails the save.
	Cut func(context.Context, *qmp.Client) error
	// Finish runs once the state file is whole, synced and hashed, before
	// Done; its error fails the stream.
	Finish func(state manifest.FileDigest) error
}

// Stream is a live save at or past its snapshot point, whose stream may
// still be being written.
type Stream struct {
	// Stopped is QEMU's STOP at the point (zero: the VM was stopped
	// already), At its RESUME (zero: the stream ended before hostd saw
	// it); both are set when Background or Precopy returns.
	Stopped, At time.Time

	a      *Armed
	o      Options
	done   chan struct{}
	err    error
	copied chan error // QEMU's end of the copy, before the file's
	stop   context.CancelCauseFunc
	// hold keeps a finished precopy from running its VM until the point
	// is behind (release).
	hold    chan struct{}
	release func()
}

// Done is closed at the stream's end; then Err says whether it failed.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Err is why the stream failed (nil: the file is whole and Finish ran),
// once Done.
func (s *Stream) Err() error { return s.err }

func newStream(a *Armed, o Options) (*Stream, context.Context) {
	s := &Stream{a: a, o: o, done: make(chan struct{}), copied: make(chan error, 1), hold: make(chan struct{})}
	s.release = sync.OnceFunc(func() { close(s.hold) })
	// The stream outlives the request that started it.
	sctx, stop := context.WithCancelCause(context.Background())
	s.stop = stop
	return s, sctx
}

// await feeds on QEMU's STOP and RESUME events and "completed" (the copy's
// end) until on says the point is behind. A copy that failed fails it,
// once its stream is over; so does ctx's end, which cancels the stream.
func (s *Stream) await(ctx context.Context, events <-chan goqmp.Event, on func(ev string, at time.Time) bool) error {
	for {
		ev, at := "completed", time.Now()
		select {
		case e, ok := <-events:
			if !ok {
				events = nil // the monitor is gone: the copy's end follows
				continue
			}
			if e.Event == "MIGRATION" && e.Data["status"] != "completed" {
				continue
			}
			if e.Event != "MIGRATION" {
				ev, at = e.Event, qmp.EventTime(e)
			}
		case err := <-s.copied:
			if err != nil {
				s.release()
				<-s.done
				return s.err
			}
		case <-ctx.Done():
			s.stop(ctx.Err())
			s.release()
			<-s.done
			return ctx.Err()
		}
		if on(ev, at) {
			return nil
		}
	}
}

// follow waits for QEMU's copy to end (cancelling it on error), reports it
// to await, lets afterCopy have its say, and finishes the file.
func (s *Stream) follow(sctx context.Context, progress func(qmp.MigrationInfo), afterCopy func(error) error) {
	defer close(s.done)
	_, err := s.a.mon.WaitMigration(sctx, poll, progress)
	s.stop(nil)
	if err != nil {
		cleanup(s.a.mon.MigrateCancel)
	}
	s.copied <- err
	s.finish(afterCopy(err))
	s.a.end()
}

// finish ends a stream that QEMU wrote whole into the state file (err
// nil), its offset at its end: the room reserved past it goes, the file is
// synced and hashed, and Finish runs. On any error the directory goes.
func (s *Stream) finish(err error) {
	var fd manifest.FileDigest
	if err == nil {
		err = atLowestPriority(func() error {
			f := s.a.f
			end, err := f.Seek(0, io.SeekCurrent)
			if err == nil {
				err = f.Truncate(end)
			}
			if err == nil {
				err = f.Sync()
			}
			if err == nil {
				fd, err = manifest.HashFile(f.Name())
			}
			return err
		})
	}
	if err == nil {
		fd.Role = "state"
		err = s.o.Finish(fd)
	}
	if err != nil {
		os.RemoveAll(s.a.dir)
		s.err = fmt.Errorf("live checkpoint stream: %w", err)
		s.o.Log.Error("live checkpoint failed; the vm runs on untouched", "err", s.err)
		return
	}
	s.o.Log.Info("live checkpoint stream complete", "dir", s.a.dir, "bytes", fd.Size)
}

// atLowestPriority runs fn on a thread of the lowest priority: syncing
// (the kernel writes the pages back on the caller's time) and hashing a
// stream take tens of milliseconds of CPU per 256 MiB, which the vCPUs and
// the other VMs' streams (serving their guests' write faults) need more.
func atLowestPriority(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		// The thread dies with this goroutine (locked, never unlocked).
		runtime.LockOSThread()
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		ch <- fn()
	}()
	return <-ch
}

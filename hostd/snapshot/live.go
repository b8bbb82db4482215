package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/qmp"
)

// ErrUnsupported: this QEMU or kernel cannot take a background snapshot,
// or no room can be reserved for the stream; the caller falls back to
// stop-and-save and says why.
var ErrUnsupported = errors.New("live checkpoint unsupported")

// FD is QEMU's name for a live save's state file until its stream starts.
const FD = "symvirt-live"

// Armed is a live save made ready while the VM runs: QEMU's MIGRATION
// events on, its bandwidth set, and the state file open with its room
// reserved and handed to QEMU.
type Armed struct {
	mon  *qmp.Client
	dir  string
	f    *os.File
	used bool     // a stream took it
	copy *copyRun // its precopy, from Copy or Precopy
}

// Arm prepares a live save of a VM of ram bytes of RAM into dir, which
// exists and is empty. bandwidth caps the stream (bytes/s; 0: none): a cap
// makes the guest's write faults wait out QEMU's rate-limiting windows.
// On error dir is gone.
func Arm(ctx context.Context, mon *qmp.Client, dir string, ram, bandwidth int64) (*Armed, error) {
	a := &Armed{mon: mon, dir: dir}
	// The sooner hostd hears that a copy stopped its VM, the sooner it runs.
	err := mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true})
	if err == nil {
		a.f, err = os.OpenFile(filepath.Join(dir, manifest.StateName), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	}
	if err == nil {
		err = unix.Fallocate(int(a.f.Fd()), 0, 0, bound(ram))
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = fmt.Errorf("%w: no fallocate in %s to reserve the stream's room", ErrUnsupported, dir)
		} else if err != nil {
			err = fmt.Errorf("reserve %d MiB for the stream in %s: %w", bound(ram)>>20, dir, err)
		}
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
		a.cancelCopy()
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
	if a.copy != nil && a.copy.held {
		a.endHold()
	}
	cleanup(func(ctx context.Context) error {
		return a.mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": false})
	})
}

// bound is the most a stream of ram bytes of RAM writes: every page with
// its header, the device state, and slack.
func bound(ram int64) int64 { return ram + ram/256 + 64<<20 }

// Options of a live save's stream.
type Options struct {
	PID int // the VM's QEMU, whose threads are reniced
	Log *slog.Logger
	// Cut (Precopy) runs while QEMU holds the VM stopped at its point,
	// before it runs again; its error fails the save.
	Cut func(context.Context, *qmp.Client) error
	// Point (Background) runs right before the snapshot point, once all
	// else is set up: a VM with disks stops there for their cut, so it
	// stands still as little as can be. Its error fails the save.
	Point func(context.Context, *qmp.Client) error
	// Finish runs once the state file is whole, synced and hashed, before
	// Done; its error fails the stream.
	Finish func(state manifest.FileDigest) error
}

// Stream is a live save at or past its snapshot point, whose stream may
// still be being written.
type Stream struct {
	// Asked is when QEMU was asked for a background snapshot's point,
	// Stopped its STOP there (zero: the VM was stopped already), At its
	// RESUME (zero: unseen, the stream was that quick). From Asked to
	// Stopped QEMU sets the stream up with the VM running.
	Asked, Stopped, At time.Time
	// VCPU is what the VM's vCPU threads had of the host's CPUs from the
	// point's start (its boost) to its RESUME: a guest that stalls there
	// longer than QEMU's pause either waited for a core (Wait) or for
	// QEMU's big lock.
	VCPU qemu.SchedStat

	a      *Armed
	o      Options
	done   chan struct{}
	err    error
	copied chan error // QEMU's end of the copy, before the file's
	stop   context.CancelCauseFunc
	// hold keeps a finished precopy's VM stopped and its file unfinished
	// until its point, cut included, is behind (release): a file finished
	// vouches for a point with its cut.
	hold    chan struct{}
	release func()
}

// Done is closed at the stream's end.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Err, once Done, is why the stream failed (nil: Finish ran).
func (s *Stream) Err() error { return s.err }

func newStream(a *Armed, o Options) (*Stream, context.Context) {
	s := &Stream{a: a, o: o, done: make(chan struct{}), copied: make(chan error, 1), hold: make(chan struct{})}
	s.release = sync.OnceFunc(func() { close(s.hold) })
	// The stream outlives the request that started it.
	sctx, stop := context.WithCancelCause(context.Background())
	s.stop = stop
	return s, sctx
}

// Background takes a background snapshot's point and returns once QEMU
// runs the VM again. It writes straight into the file: no pipe, no rate
// limit (which would park the guest's faults). On error the arm is
// disarmed.
func Background(ctx context.Context, a *Armed, o Options) (*Stream, error) {
	if err := a.mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": true}); err != nil {
		a.Disarm()
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	unlock, err := serializePoints(ctx, o.Log)
	if err != nil {
		a.Disarm()
		return nil, err
	}
	s, sctx := newStream(a, o)
	events, unsubscribe := a.mon.Subscribe("STOP", "RESUME", "MIGRATION")
	defer unsubscribe()
	// Until a little after the point the VM goes first: the stream's
	// set-up holds QEMU's big lock (stalling the guest's I/O), the point
	// needs the main loop and the vCPUs, and a guest waiting for a CPU is
	// as stalled as a paused one. The stream's thread inherits the boost.
	vcpu := vcpuSched(o.PID)
	unboost := boost(o.PID, snapshotNice)
	endBoost := func() { unboost(); unlock() }
	if o.Point != nil {
		if err := o.Point(ctx, a.mon); err != nil {
			endBoost()
			a.Disarm()
			return nil, err
		}
	}
	s.Asked = time.Now()
	if err := a.mon.Migrate(ctx, "fd:"+FD); err != nil {
		endBoost()
		a.Disarm()
		return nil, err
	}
	a.used = true
	go resumeAfterPoint(sctx, a.mon)
	go s.follow(sctx, nil, func(err error) error { return err })
	err = s.await(ctx, events, func(ev string, at time.Time) bool {
		switch ev {
		case "STOP":
			s.Stopped = at
		case "RESUME":
			s.At = at
		}
		return ev != "STOP"
	})
	s.VCPU = vcpuSched(o.PID).Sub(vcpu)
	if err != nil || s.At.IsZero() {
		endBoost()
	} else {
		time.AfterFunc(catchUp, endBoost)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// await feeds on QEMU's STOP and RESUME events and "completed" (the copy's
// end) until on says the point is behind. A copy that failed fails it,
// once its stream is over; so does ctx's end, which cancels the stream.
func (s *Stream) await(ctx context.Context, events <-chan goqmp.Event, on func(ev string, at time.Time) bool) error {
	for {
		ev, at := "completed", time.Now()
		select {
		case e, ok := <-events:
			switch {
			case !ok:
				events = nil // the monitor is gone: the copy's end follows
				continue
			case e.Event != "MIGRATION":
				ev, at = e.Event, qmp.EventTime(e)
			case e.Data["status"] != "completed":
				continue
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

// follow waits for QEMU's copy to end (cancelling it on error), tells
// await, lets afterCopy have its say, and finishes the file.
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
			end, err := s.a.f.Seek(0, io.SeekCurrent)
			if err == nil {
				err = errors.Join(s.a.f.Truncate(end), s.a.f.Sync())
			}
			return err
		})
	}
	if err == nil {
		fd, err = hashLowest(s.a.f)
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

package hostd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/hostd/disk"
	"github.com/symvirt/symvirt/hostd/snapshot"
	"github.com/symvirt/symvirt/qmp"
)

// A live checkpoint's mechanics are hostd/snapshot's; here is which arm and
// which stream belong to which VM, and the persisted record of a stream in
// flight.

// liveSave is a VM's live checkpoint past its snapshot point, whose stream
// may still be being written.
type liveSave struct {
	dir  string
	done chan struct{} // closed at the stream's end, err set
	err  error
	// pause: the vCPUs stood still for the point from QEMU's STOP (or
	// hostd's stop for the job's cut) to at, QEMU's RESUME.
	pause    time.Duration
	at       time.Time
	reattach bool // a hot-plug waits for the stream's end
}

func (ls *liveSave) wait(ctx context.Context) error {
	select {
	case <-ls.done:
		return ls.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startLiveSave takes the snapshot point of operation op's armed live
// checkpoint and returns once the VM runs again; the stream is vm.live,
// recorded in flight until it ends.
func (vm *VM) startLiveSave(ctx context.Context, mon *qmp.Client, op string, a *snapshot.Armed) error {
	dir := a.Dir()
	vm.streamStarts(op, dir)
	s, err := vm.pointLive(ctx, mon, a)
	if err != nil {
		vm.streamEnded(dir)
		return fmt.Errorf("vm %q: %w", vm.name, err)
	}
	ls := &liveSave{dir: dir, done: make(chan struct{}), at: s.At}
	vm.mu.Lock()
	stopped := s.Stopped
	if stopped.IsZero() {
		stopped = vm.stoppedAt
	}
	vm.stoppedAt = time.Time{}
	vm.live = ls
	vm.mu.Unlock()
	if !stopped.IsZero() && !s.At.IsZero() {
		ls.pause = s.At.Sub(stopped)
		vm.h.metrics.pause.Observe(ls.pause.Seconds())
	}
	attrs := []any{"pause", ls.pause, "vcpu_run", s.VCPU.Run, "vcpu_wait", s.VCPU.Wait}
	if !s.Asked.IsZero() && !s.Stopped.IsZero() {
		attrs = append(attrs, "qemu_setup", s.Stopped.Sub(s.Asked))
	}
	vm.log.Info("snapshot point taken", attrs...)
	go func() {
		<-s.Done()
		if err := s.Err(); err != nil {
			ls.err = fmt.Errorf("vm %q: %w", vm.name, err)
		}
		vm.streamEnded(dir)
		close(ls.done)
	}()
	return nil
}

// pointLive starts the stream: a running VM is copied while it runs
// (LiveMode precopy) and fenced at its point; any other is saved by a
// background snapshot, fenced right before its point. A VM with disks is
// stopped right before its point and its disks are cut there (in O(1);
// their copies are part of the stream).
func (vm *VM) pointLive(ctx context.Context, mon *qmp.Client, a *snapshot.Armed) (*snapshot.Stream, error) {
	st, err := mon.Status(ctx)
	if err != nil {
		a.Disarm()
		return nil, err
	}
	disks := len(vm.Spec().Disks) > 0
	precopy := vm.precopies(st)
	m := vm.newManifest(mon)
	var cut *diskCut
	o := snapshot.Options{PID: vm.pid(), Log: vm.log, Cut: vm.fence, Finish: func(state FileDigest) error {
		m.Files = append(m.Files, state)
		files, err := cut.wait(context.Background())
		if err != nil {
			return err
		}
		addDisks(&m, files)
		return vm.h.writeCheckpointManifest(a.Dir(), m)
	}}
	if precopy {
		return snapshot.Precopy(ctx, a, o)
	}
	o.Point = func(ctx context.Context, mon *qmp.Client) (err error) {
		if err := vm.fence(ctx, mon); err != nil {
			if st.Running {
				return err
			}
			// Stopped for the cut, it cannot be fenced: QEMU would run
			// it again at its point, unfenced, before the job's last
			// point. Saved stop-and-save, it stays stopped until resumed.
			return fmt.Errorf("%w: %v", snapshot.ErrUnsupported, err)
		}
		if st.Running && disks {
			if err := vm.stopForPoint(ctx, mon); err != nil {
				return err
			}
		}
		cut, err = vm.cutDisks(ctx, mon, a.Dir())
		return err
	}
	s, err := snapshot.Background(ctx, a, o)
	if err != nil {
		cut.abandon()
	}
	return s, err
}

// stopForPoint stops the VM at its snapshot point; its pause is from here.
func (vm *VM) stopForPoint(ctx context.Context, mon *qmp.Client) error {
	if err := mon.Stop(ctx); err != nil {
		return err
	}
	vm.mu.Lock()
	vm.stoppedAt = timeNow()
	vm.mu.Unlock()
	return nil
}

// precopies reports whether a live checkpoint of the VM in state st is a
// precopy: it runs, has no disks (they are cut with the VM stopped), and
// the host's live mode is precopy.
func (vm *VM) precopies(st qmp.Status) bool {
	return st.Running && len(vm.Spec().Disks) == 0 && vm.h.cfg.LiveMode == "precopy"
}

func (vm *VM) pid() int {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.rt.PID
}

// takeArm returns the live checkpoint the arm step made ready in dir, or
// arms one there now (the arm step failed, or hostd restarted since).
func (vm *VM) takeArm(ctx context.Context, mon *qmp.Client, dir string, bandwidth int64) (*snapshot.Armed, error) {
	vm.mu.Lock()
	a := vm.armed
	vm.armed = nil
	vm.mu.Unlock()
	if a != nil && a.Dir() == dir {
		return a, nil
	}
	if a != nil {
		a.Disarm()
	}
	if err := freshDir(dir); err != nil {
		return nil, err
	}
	a, err := snapshot.Arm(ctx, mon, dir, int64(vm.Spec().Memory)<<20, bandwidth)
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", vm.name, err)
	}
	return a, nil
}

// dropArm disarms a live checkpoint that was armed and never started (the
// operation rolled back).
func (vm *VM) dropArm() {
	disk.Discard(vm.takeReady())
	vm.mu.Lock()
	a := vm.armed
	vm.armed = nil
	vm.mu.Unlock()
	if a != nil {
		a.Disarm()
	}
}

// ErrStreamLost: a job's live checkpoint stream was being written when
// hostd died. It cannot be vouched for: a precopy's pipe went with hostd
// (QEMU failed the copy), and a background snapshot's file gets no
// manifest from a hostd that did not follow it. The checkpoint fails; its
// partial files are removed when hostd starts again.
var ErrStreamLost = errors.New("stream lost: hostd restarted")

// liveStream is a VM's persisted record of its job's live stream, from the
// point step until the stream ends (or, once Lost, until the next point).
type liveStream struct {
	Op   string `json:"op"`
	Dir  string `json:"dir"`
	Lost bool   `json:"lost,omitempty"`
}

func (vm *VM) streamStarts(op, dir string) {
	vm.mu.Lock()
	vm.rt.Stream = &liveStream{Op: op, Dir: dir}
	vm.saveRuntime()
	vm.mu.Unlock()
}

// streamEnded drops the record of the stream into dir: it completed (its
// manifest is written) or failed (its files are gone, the failure is the
// wait-save's answer).
func (vm *VM) streamEnded(dir string) {
	vm.mu.Lock()
	if s := vm.rt.Stream; s != nil && s.Dir == dir && !s.Lost {
		vm.rt.Stream = nil
		vm.saveRuntime()
	}
	vm.mu.Unlock()
}

// lostStream is ErrStreamLost if dir's stream was lost with a hostd.
func (vm *VM) lostStream(dir string) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if s := vm.rt.Stream; s != nil && s.Dir == dir && s.Lost {
		return fmt.Errorf("vm %q: live checkpoint %s of operation %s: %w", vm.name, dir, s.Op, ErrStreamLost)
	}
	return nil
}

// loseStream, when hostd starts, settles the stream the hostd before it
// left in flight: one that wrote its manifest completed; any other is
// lost, and its partial files go (a background snapshot QEMU still writes
// goes on into a file no longer there).
func (vm *VM) loseStream() {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	s := vm.rt.Stream
	if s == nil || s.Lost {
		return
	}
	if _, err := os.Stat(filepath.Join(s.Dir, manifestName)); err == nil {
		vm.rt.Stream = nil
	} else {
		if err := os.RemoveAll(s.Dir); err != nil {
			vm.log.Error("remove a lost live checkpoint's files", "dir", s.Dir, "err", err)
		}
		s.Lost = true
		vm.log.Warn("the live checkpoint stream in flight when hostd stopped is lost", "op", s.Op, "dir", s.Dir)
	}
	vm.saveRuntime()
}

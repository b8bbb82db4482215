package snapshot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/qemu"

	"github.com/symvirt/symvirt/qmp"
)

// pipeFD is QEMU's name for the write end of a precopy's pipe.
const pipeFD = "symvirt-live-pipe"

// precopyDowntime is the pause QEMU aims at when it stops a VM for the
// last pages of a precopy (its downtime-limit). It needs the guest to
// dirty pages more slowly than the disk takes them; converge raises it for
// one that does not.
const precopyDowntime = 5 * time.Millisecond

// precopyPasses is how many passes over the dirty pages a precopy makes at
// precopyDowntime before converge starts doubling it.
const precopyPasses = 8

// Precopy copies a running VM into the armed file until what is left fits
// in precopyDowntime; QEMU then stops it for the rest, o.Cut runs, and the
// VM runs again: Precopy returns. The stream goes through a pipe hostd
// drains, so it lives no longer than hostd: a hostd that dies breaks it,
// QEMU fails the migration and runs the VM on, never left stopped at the
// end of a copy nobody would resume; a disk full past the reserved room
// fails it the same way. On error the arm is disarmed.
func Precopy(ctx context.Context, a *Armed, o Options) (*Stream, error) {
	s, sctx := newStream(a, o)
	defer s.release()
	events, unsubscribe := a.mon.Subscribe("STOP", "RESUME", "MIGRATION")
	defer unsubscribe()
	cut := func() error { return nil }
	if o.Cut != nil {
		cut = func() error { return o.Cut(context.WithoutCancel(ctx), a.mon) }
	}
	p := &precopy{Stream: s, drained: make(chan error, 1), unboost: func() {}, cut: sync.OnceValue(cut)}
	r, err := p.start(ctx)
	if err != nil {
		return nil, fmt.Errorf("live checkpoint: %w", err)
	}
	go s.follow(sctx, p.converger(sctx), func(err error) error {
		if err != nil {
			r.Close()
		}
		<-s.hold
		p.runAfterCopy() // one that completed as ctx ended is postmigrate
		p.restoreParams()
		if derr := <-p.drained; err == nil && derr != nil {
			err = fmt.Errorf("write stream: %w", derr)
		}
		if err == nil && !p.pointed {
			err = errors.New("no snapshot point: the save was cancelled")
		}
		return cmp.Or(err, p.cutErr)
	})
	defer func() { p.unboost() }()
	if err := s.await(ctx, events, p.on); err != nil {
		return nil, err
	}
	if p.cutErr != nil {
		<-s.done
		return nil, p.cutErr
	}
	return s, nil
}

type precopy struct {
	*Stream
	downtime         int64 // QEMU's downtime-limit (ms) before the copy
	drained          chan error
	unboost          func()
	cut              func() error // Options.Cut, once
	cutErr           error        // the cut's at the point
	pointed, resumed bool
}

// start starts the copy through a pipe drained into the file; it returns
// the pipe's read end.
func (p *precopy) start(ctx context.Context) (*os.File, error) {
	mon := p.a.mon
	r, w, err := os.Pipe()
	if err != nil {
		p.a.Disarm()
		return nil, err
	}
	// QEMU has its own: its close at the stream's end is our EOF.
	defer w.Close()
	// Big enough for QEMU's writes not to wait on hostd's reads.
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
	var params struct {
		Downtime int64 `json:"downtime-limit"`
	}
	err = mon.GetFD(ctx, pipeFD, w)
	if err == nil {
		err = mon.Execute(ctx, "query-migrate-parameters", nil, &params)
	}
	p.downtime = params.Downtime
	if err == nil {
		err = mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": precopyDowntime.Milliseconds()})
	}
	if err == nil {
		go func() {
			p.drained <- drain(r, p.a.f)
			r.Close() // QEMU's next write fails: so does the migration
		}()
		if err = mon.Migrate(ctx, "fd:"+pipeFD); err != nil {
			cleanup(func(ctx context.Context) error { return mon.CloseFD(ctx, pipeFD) })
		}
	}
	if err != nil {
		r.Close()
		p.restoreParams()
		p.a.Disarm()
		return nil, err
	}
	p.a.used = true
	p.o.Log.Info("live checkpoint copy started", "downtime_limit", precopyDowntime)
	// A guest waiting for a CPU is stalled, a copy that waits only longer.
	renice(p.o.PID, streamNice, qemu.MigrationThreadNames...)
	return r, nil
}

func (p *precopy) restoreParams() {
	if p.downtime > 0 {
		cleanup(func(ctx context.Context) error {
			return p.a.mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": p.downtime})
		})
	}
}

// converger gives a guest that dirties memory faster than the disk takes
// it (it never fits in precopyDowntime) a longer pause rather than no
// checkpoint.
func (p *precopy) converger(ctx context.Context) func(qmp.MigrationInfo) {
	dl := precopyDowntime
	return func(mi qmp.MigrationInfo) {
		if want := converge(mi.RAM.DirtySyncCount); want > dl {
			dl = want
			p.o.Log.Info("live checkpoint: the guest dirties memory fast; longer pause allowed", "downtime_limit", dl, "passes", mi.RAM.DirtySyncCount)
			p.a.mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": dl.Milliseconds()})
		}
	}
}

// converge is the downtime-limit a copy allows after passes passes over
// dirty pages: precopyDowntime, doubled per pass past precopyPasses, at
// most 2 s (QEMU then stops the VM for what is left).
func converge(passes int64) time.Duration {
	n := passes - precopyPasses
	if n <= 0 {
		return precopyDowntime
	}
	return min(precopyDowntime<<min(n, 20), 2*time.Second)
}

// on follows QEMU's events to the point: the copy complete, the VM held
// stopped by QEMU, its cut up, and the VM run again.
func (p *precopy) on(ev string, at time.Time) bool {
	switch ev {
	case "STOP":
		// The last pages and the devices: the VM stands still until they
		// are out, so it goes first now, and its cut goes up.
		p.Stopped = at
		p.unboost()
		p.unboost = boost(p.o.PID, snapshotNice)
		p.cut()
	case "completed":
		if !p.pointed {
			p.pointed, p.cutErr = true, p.cut()
			p.resumed = p.runAfterCopy()
			p.release()
		}
		p.At = at
		return !p.resumed // else QEMU's RESUME follows, with its time
	case "RESUME":
		p.At = at
		return p.pointed
	}
	return false
}

// runAfterCopy runs a VM whose copy has completed. QEMU announces the
// completion a moment before it marks the VM postmigrate (a cont in
// between would be undone), so it waits for that mark; a VM in any other
// state is left as it is.
func (p *precopy) runAfterCopy() (resumed bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		st, err := p.a.mon.Status(ctx)
		if err != nil {
			return false
		}
		switch st.Status {
		case "postmigrate":
			if err := p.a.mon.Cont(ctx); err != nil {
				p.o.Log.Error("run the vm after its live checkpoint copy", "err", err)
				return false
			}
			return true
		case "finish-migrate":
			time.Sleep(100 * time.Microsecond)
		default:
			return false
		}
	}
}

// drain copies the pipe r into f (at f's offset) until EOF, by splice: the
// stream does not pass through hostd's memory.
func drain(r, f *os.File) error {
	rc, err := r.SyscallConn()
	if err != nil {
		return err
	}
	out := int(f.Fd())
	for {
		var n int64
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			n, serr = unix.Splice(int(fd), nil, out, nil, 1<<20, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			return serr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return err
		case serr != nil:
			return serr
		case n == 0:
			return nil
		}
	}
}

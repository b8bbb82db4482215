package snapshot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/qmp"
)

// copyFD is QEMU's name for its end of a precopy's socket pair.
const copyFD = "symvirt-live-copy"

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
// VM runs again: Precopy returns. A copy Copy started at the arm is
// released here; any other starts now. The stream goes through a socket
// hostd drains, so it lives no longer than hostd: a hostd that dies breaks
// it, QEMU fails the migration and runs the VM on, never left stopped at
// the end of a copy nobody would resume; a disk full past the reserved
// room fails it the same way. On error the arm is disarmed.
func Precopy(ctx context.Context, a *Armed, o Options) (*Stream, error) {
	s, sctx := newStream(a, o)
	defer s.release()
	events, unsubscribe := a.mon.Subscribe("STOP", "RESUME", "MIGRATION")
	defer unsubscribe()
	cut := func() error { return nil }
	if o.Cut != nil {
		cut = func() error { return o.Cut(context.WithoutCancel(ctx), a.mon) }
	}
	if a.copy != nil && a.copy.held {
		// Released together, a job's held copies stop their VMs at once:
		// on one machine they take their points one at a time, as
		// background points do, each a burst of CPU its VM waits out.
		unlock, err := serializePoints(ctx, o.Log)
		if err != nil {
			a.Disarm()
			return nil, err
		}
		defer unlock()
	}
	p := &precopy{Stream: s, unboost: func() {}, cut: sync.OnceValue(cut)}
	if err := p.start(ctx); err != nil {
		return nil, fmt.Errorf("live checkpoint: %w", err)
	}
	c := a.copy
	go s.follow(sctx, p.converger(sctx), func(err error) error {
		if err != nil {
			c.conn.Close()
		}
		<-s.hold
		p.runAfterCopy() // one that completed as ctx ended is postmigrate
		c.restoreParams(a.mon)
		if derr := <-c.drained; err == nil && derr != nil {
			err = fmt.Errorf("write stream: %w", derr)
		}
		c.conn.Close()
		if err == nil && !p.pointed {
			err = errors.New("no snapshot point: the save was cancelled")
		}
		return cmp.Or(err, p.cutErr)
	})
	defer func() { p.unboost() }()
	if err := s.await(ctx, events, p.on); err != nil {
		return nil, err
	}
	if p.boosted {
		s.VCPU = vcpuSched(p.o.PID).Sub(p.vcpu)
	}
	if p.cutErr != nil {
		<-s.done
		return nil, p.cutErr
	}
	return s, nil
}

type precopy struct {
	*Stream
	unboost          func()
	boosted          bool
	vcpu             qemu.SchedStat // at the boost
	cut              func() error   // Options.Cut, once
	cutErr           error          // the cut's at the point
	pointed, resumed bool
}

// start releases the copy Copy started at the arm, or starts one.
func (p *precopy) start(ctx context.Context) error {
	a := p.a
	if a.copy == nil {
		c, err := startCopy(ctx, a, p.o.Log, p.o.PID)
		if err != nil {
			a.Disarm()
			return err
		}
		a.copy = c
	}
	if a.copy.held {
		// Its last pass and its stop come now: the VM goes first.
		p.boostVM()
	}
	a.used = true
	if err := a.copy.release(); err != nil {
		p.unboost()
		a.used = false
		a.Disarm()
		return fmt.Errorf("release the copy's switchover: %w", err)
	}
	if a.copy.held {
		mi, _ := a.mon.QueryMigrate(ctx) // where the release found it
		p.o.Log.Info("live checkpoint copy released", "passes", mi.RAM.DirtySyncCount, "remaining", mi.RAM.Remaining)
	}
	return nil
}

// boostVM puts the VM first until the point is behind.
func (p *precopy) boostVM() {
	p.vcpu = vcpuSched(p.o.PID)
	unboost, normal := boost(p.o.PID, snapshotNice), realtime(p.o.PID, p.o.Log)
	p.unboost = func() { normal(); unboost() }
	p.boosted = true
}

// converger gives a guest that dirties memory faster than the disk takes
// it (it never fits in precopyDowntime) a longer pause rather than no
// checkpoint.
func (p *precopy) converger(ctx context.Context) func(qmp.MigrationInfo) {
	dl := precopyDowntime
	held, base := p.a.copy.held, int64(-1)
	return func(mi qmp.MigrationInfo) {
		if base < 0 {
			// A held copy's passes before its release do not count.
			base = 0
			if held {
				base = mi.RAM.DirtySyncCount
			}
		}
		passes := mi.RAM.DirtySyncCount - base
		if want := converge(passes); want > dl {
			dl = want
			p.o.Log.Info("live checkpoint: the guest dirties memory fast; longer pause allowed", "downtime_limit", dl, "passes", passes)
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
		if !p.boosted {
			p.boostVM()
		}
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

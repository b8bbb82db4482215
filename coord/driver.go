package coord

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/coord/run"
)

// drive runs rec's operation to its end through run.Drive (actions are
// RPCs to hostds), renews the hostds' leases meanwhile, records the result
// and releases the job. Its error wraps run.ErrJournal when the journal
// could not be written.
func (c *Coord) drive(ctx context.Context, rec *OpRecord, acts []machine.Action, progress ProgressFunc) (machine.Result, error) {
	op := rec.Op
	log := c.log.With("op", op.ID, "job", op.Job, "kind", op.Kind)
	renewCtx, stopRenew := context.WithCancel(ctx)
	defer stopRenew()
	go c.renewLeases(renewCtx, rec)
	journaled := 0 // successful writes: each sends the actions of a step
	ex := &executor{c: c, rec: rec, notes: &vmNotes{}}
	lv := c.track(rec)
	res, err := run.Drive(ctx, op, acts, ex, run.Hooks{
		Journal: func(*machine.Op) error {
			err := c.store.Put(bucketOps, op.ID, rec)
			if err != nil {
				// No lease renewed from now on: a crash now could not be
				// recovered, so the hostds' leases undo what the
				// operation paused (their designed last line of defence).
				stopRenew()
			}
			return err
		},
		Journaled: func(op *machine.Op) { journaled++; c.crashPoint(op) },
		Progress:  lv.progress(progressHook(progress)),
		Inbox:     lv.inbox,
		Log:       log,
	})
	for i := range res.VMs {
		res.VMs[i].Note = ex.notes.get(res.VMs[i].Name)
	}
	if err == nil {
		rec.Result = &res
		if perr := c.store.Put(bucketOps, op.ID, rec); perr != nil {
			log.Error("journal write failed: the operation's result is not recorded", "err", perr)
			err = fmt.Errorf("operation %s: %w: %w", op.ID, run.ErrJournal, perr)
		}
	}
	if err != nil {
		res.Reason, res.Error = journalFailed(res, err)
	}
	c.untrack(lv, op, res, err)
	if res.Done {
		c.afterOp(rec, res)
		log.Info("operation done", "outcome", res.Outcome, "reason", res.Reason, "lost", res.Lost)
	}
	c.releaseAfter(op.Job, !res.Done && journaled > 0 && errors.Is(err, run.ErrJournal))
	return res, err
}

// journalFailed says why an operation whose journal could not be written
// ended where it did.
func journalFailed(res machine.Result, err error) (reason, problem string) {
	if res.Done {
		// Every action is done; only the record of it is missing (a
		// restarted coordinator runs the closing steps again: idempotent).
		return res.Reason, err.Error()
	}
	return err.Error(), "stopped: no further actions sent; each hostd resumes what it holds paused when its lease runs out"
}

// releaseAfter frees the job once its operation ended. An operation stopped
// for its journal while it held VMs keeps the job busy until the hostds'
// leases have undone what it paused.
func (c *Coord) releaseAfter(job string, held bool) {
	if !held {
		c.release(job)
		return
	}
	time.AfterFunc(2*c.cfg.Lease, func() { c.release(job) })
}

// progressHook reports an operation's phase and how many VMs are through
// it; it runs on the driver's goroutine.
func progressHook(progress ProgressFunc) func(*machine.Op) {
	if progress == nil {
		return nil
	}
	return func(op *machine.Op) {
		p := Progress{Op: op.ID, Phase: string(op.Phase), Total: len(op.VMs)}
		for _, v := range op.VMs {
			if v.Pending == nil {
				p.Done++
			}
		}
		progress(p)
	}
}

// crashPoint exits the process right after the journal write when the
// operation enters the configured phase: a kill -9 at a known instant.
func (c *Coord) crashPoint(op *machine.Op) {
	c.stopPoint(op)
	if c.cfg.CrashAt != "" && string(op.Phase) == c.cfg.CrashAt {
		c.log.Warn("crash point reached: exiting without cleanup", "phase", op.Phase)
		exit := c.cfg.Exit
		if exit == nil {
			exit = os.Exit
		}
		exit(99)
	}
}

// renewLeases keeps the hostds from undoing the operation on their own.
func (c *Coord) renewLeases(ctx context.Context, rec *OpRecord) {
	t := time.NewTicker(c.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for name, addr := range rec.Hosts {
			rctx, cancel := context.WithTimeout(ctx, c.cfg.Lease/3)
			if err := c.client(addr).RenewLeases(rctx, rec.Op.ID, c.cfg.Lease, c.epoch()); err != nil && !errors.Is(err, context.Canceled) {
				c.log.Debug("lease renewal", "host", name, "err", err)
			}
			cancel()
		}
	}
}

// vmNotes collect, per VM, how a successful step departed from its request
// (written by the action goroutines, reported, not journaled).
type vmNotes struct {
	mu sync.Mutex
	m  map[string]string
}

func (n *vmNotes) add(vm, note string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = map[string]string{}
	}
	if prev := n.m[vm]; prev != "" {
		note = prev + "; " + note // each step's departure is worth knowing
	}
	n.m[vm] = note
}

func (n *vmNotes) get(vm string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.m[vm]
}

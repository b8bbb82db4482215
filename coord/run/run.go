package run

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// ErrJournal: the operation's journal could not be written, so it stopped.
var ErrJournal = errors.New("journal write failed")

// Executor runs actions.
type Executor interface {
	// Execute runs a and answers it: a machine.ActionResult with a.ID, or
	// a machine.HostDown for a host that is gone. It may block until the
	// action's deadline; it must honour ctx.
	Execute(ctx context.Context, a machine.Action) machine.Event
}

// ExecutorFunc adapts a function to Executor.
type ExecutorFunc func(ctx context.Context, a machine.Action) machine.Event

// Execute calls f.
func (f ExecutorFunc) Execute(ctx context.Context, a machine.Action) machine.Event { return f(ctx, a) }

// Hooks are the driver's optional callbacks; each runs on the driver's
// goroutine, which owns the Op.
type Hooks struct {
	// Journal persists the Op; it is required.
	Journal func(*machine.Op) error
	// Journaled runs after each successful journal write, before the
	// actions go out (tests use it to crash at a known point).
	Journaled func(*machine.Op)
	// Progress runs after each step.
	Progress func(*machine.Op)
	// Inbox carries events from outside the driver (an operator's
	// machine.Cancel); the driver steps them like any other, so it stays
	// the only one touching the Op. Nil: none.
	Inbox <-chan machine.Event
	Log   *slog.Logger
}

// Drive runs op to its end, starting with acts (the actions New or Recover
// returned). It returns the operation's result, and ErrJournal (wrapped)
// if it had to stop because the journal could not be written: the result
// is then undecided.
func Drive(ctx context.Context, op *machine.Op, acts []machine.Action, ex Executor, h Hooks) (machine.Result, error) {
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	d := &driver{op: op, ex: ex, h: h, log: log, events: make(chan machine.Event, 64),
		finished: make(chan struct{}), down: map[string]bool{}}
	defer close(d.finished)
	if err := d.send(ctx, acts); err != nil {
		return op.Result(), err
	}
	for !op.Done() {
		ev, ok := d.next()
		if !ok {
			continue
		}
		if err := d.send(ctx, op.Step(ev)); err != nil {
			return op.Result(), err
		}
	}
	return op.Result(), nil
}

type driver struct {
	op       *machine.Op
	ex       Executor
	h        Hooks
	log      *slog.Logger
	events   chan machine.Event
	finished chan struct{}
	down     map[string]bool
	// journaled is the phase of the last journal write ("" before the first).
	journaled machine.Phase
}

// send journals the Op, then executes acts in parallel.
func (d *driver) send(ctx context.Context, acts []machine.Action) error {
	if d.mustJournal(acts) {
		start := time.Now()
		if err := d.h.Journal(d.op); err != nil {
			d.log.Error("journal write failed: the operation stops here", "op", d.op.ID, "phase", d.op.Phase, "err", err)
			return fmt.Errorf("operation %s: %w: %w", d.op.ID, ErrJournal, err)
		}
		d.logJournal(time.Since(start), len(acts))
		d.journaled = d.op.Phase
		if d.h.Journaled != nil {
			d.h.Journaled(d.op)
		}
	}
	for _, a := range acts {
		go func() {
			ev := d.ex.Execute(ctx, a)
			select {
			case d.events <- ev:
			case <-d.finished: // a late answer nobody waits for
			}
		}()
	}
	if d.h.Progress != nil {
		d.h.Progress(d.op)
	}
	return nil
}

// slowJournal is a journal write long enough to say so: every action
// waits for it (a disk busy with other writes, e.g. state files streaming
// on the same file system, makes its sync wait).
const slowJournal = 100 * time.Millisecond

// logJournal records a journal write and how long the actions behind it
// waited for it.
func (d *driver) logJournal(took time.Duration, acts int) {
	level := slog.LevelDebug
	msg := "journal written"
	if took > slowJournal {
		level, msg = slog.LevelWarn, "journal write slow: the operation's next steps waited for it"
	}
	d.log.Log(context.Background(), level, msg, "op", d.op.ID, "phase", d.op.Phase, "took", took, "actions", acts)
}

// mustJournal reports whether the Op must be written before acts go out:
// when there are actions, when it entered a phase, and at its end. A step
// that only took in an answer and sends nothing needs no write: what the
// world saw of the operation is unchanged, and an answer lost in a crash
// comes again when the recovered operation re-sends its action
// (idempotent, de-duplicated by its id).
func (d *driver) mustJournal(acts []machine.Action) bool {
	return len(acts) > 0 || d.op.Phase != d.journaled || d.op.Done()
}

// next waits for an event or the machine's next deadline. It reports false
// for an event that needs no Step (a host already known down).
func (d *driver) next() (machine.Event, bool) {
	var timer <-chan time.Time
	if !d.op.Deadline.IsZero() {
		t := time.NewTimer(time.Until(d.op.Deadline) + 10*time.Millisecond)
		defer t.Stop()
		timer = t.C
	}
	var ev machine.Event
	select {
	case ev = <-d.events:
	case ev = <-d.h.Inbox:
	case <-timer:
		ev = machine.Tick{Now: time.Now()}
	}
	if hd, ok := ev.(machine.HostDown); ok {
		if d.down[hd.Host] {
			return nil, false
		}
		d.down[hd.Host] = true
		d.log.Warn("host down", "op", d.op.ID, "host", hd.Host)
	}
	return ev, true
}

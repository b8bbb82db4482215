package guestd

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/symvirt/symvirt/ebpf/taint"
)

// taintTracker is guestd's taint tracker: the source the freezer asks, and
// what stops it.
type taintTracker struct {
	src  taint.Source // nil: no tracker
	why  string       // why there is none
	log  *slog.Logger
	stop []func()
}

// tainted is the freezer's oracle. A pid the tracker does not know is
// untainted: the tracker keeps every tainted process until it exits.
func (t *taintTracker) tainted(pid int) bool {
	_, ok := t.src.IsTainted(pid)
	return ok
}

func (t *taintTracker) close() {
	for i := len(t.stop) - 1; i >= 0; i-- {
		t.stop[i]()
	}
}

// openTaintTracker loads the eBPF tracker (Config.Taint) and serves it on
// Config.TaintSocket. A tracker that cannot load is not fatal: guestd runs
// without it and refuses the rounds that need it, saying why.
func openTaintTracker(cfg Config, log *slog.Logger) *taintTracker {
	t := &taintTracker{log: log}
	switch {
	case cfg.taintSource != nil:
		t.src = cfg.taintSource
	case !cfg.Taint:
		t.why = "the tracker is disabled (--taint=false)"
		return t
	default:
		opts := taint.Options{
			Ignore: cfg.TaintIgnore,
			Logger: log,
			// Without it one tainted sd_notify or D-Bus message taints
			// PID 1 or the bus, and through them every service: nothing
			// would be left to freeze.
			IPCExempt: taint.DefaultIPCExempt,
		}
		open := cfg.openTaint
		if open == nil {
			open = func(o taint.Options) (taint.Source, io.Closer, error) {
				tr, err := taint.Open(o)
				if err != nil {
					return nil, nil, err
				}
				return tr, tr, nil
			}
		}
		src, c, err := open(opts)
		if err != nil {
			t.why = err.Error()
			log.Warn("taint tracker unavailable: rounds with freeze (dependency-aware migration) will be refused", "err", err)
			return t
		}
		t.src = src
		t.stop = append(t.stop, func() {
			if err := c.Close(); err != nil {
				log.Warn("taint tracker close", "err", err)
			}
		})
	}
	if cfg.TaintSocket != "-" {
		l, err := taint.Listen(cfg.TaintSocket)
		if err != nil {
			// The tracker still serves the freezer; only the CLI misses it.
			log.Warn("taint API socket unavailable: `symvirt taint list` will not work", "err", err)
			return t
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := taint.Serve(l, t.src); err != nil {
				log.Warn("taint API socket", "err", err)
			}
		}()
		t.stop = append(t.stop, func() { l.Close(); <-done })
		log.Info("taint tracker serving", "socket", cfg.TaintSocket)
	}
	return t
}

// freezeUnavailable is the REFUSED reason of a freeze round without tracker.
func (t *taintTracker) freezeUnavailable() string {
	return fmt.Sprintf("dependency-aware migration needs the taint tracker: %s", t.why)
}

package hostd

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// phaseLog records hostd's log for the bench's per-phase breakdown: each
// step's "took" (steps.go logs every step it runs) and each finer "phase"
// record hostd writes inside a step (checkpoint.go, migrate.go).
type phaseLog struct {
	mu   sync.Mutex
	recs []phaseRec
}

type phaseRec struct {
	at   time.Time
	name string
	took time.Duration
}

func (l *phaseLog) handler() slog.Handler { return phaseHandler{l} }

// since sums what was recorded from start on, by name, in seconds, and
// clears the log.
func (l *phaseLog) since(start time.Time) map[string]float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]float64{}
	for _, r := range l.recs {
		if !r.at.Before(start) {
			out[r.name] += r.took.Seconds()
		}
	}
	l.recs = nil
	return out
}

type phaseHandler struct{ l *phaseLog }

func (phaseHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h phaseHandler) WithAttrs([]slog.Attr) slog.Handler     { return h }
func (h phaseHandler) WithGroup(string) slog.Handler          { return h }

func (h phaseHandler) Handle(_ context.Context, r slog.Record) error {
	var name string
	var took time.Duration
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "kind":
			if r.Message == "step" {
				name = "step_" + a.Value.String()
			}
		case "phase":
			if r.Message == "phase" {
				name = a.Value.String()
			}
		case "took":
			took = a.Value.Duration()
		}
		return true
	})
	if name == "" || took == 0 {
		return nil
	}
	h.l.mu.Lock()
	h.l.recs = append(h.l.recs, phaseRec{at: r.Time.Add(-took), name: name, took: took})
	h.l.mu.Unlock()
	return nil
}

package guestproto

import (
	"context"
	"time"
)

// Timing is how a guest spent a round's prepare, carried by READY
// (optional: an older guest sends none, an older host ignores it). It lets
// the host tell the applications' own time to reach their safe point from
// the cooperation machinery's. The guest is not trusted: the figures are
// for reports and logs, bounded here, and never decide anything.
type Timing struct {
	// AppsNS is the longest time a registered application took from
	// learning of the round (the round's start, or the PENDING answer to
	// a WAIT that was blocked when it started) to its SYNC, in ns.
	AppsNS int64 `json:"apps_ns,omitempty"`
	// TookNS is the guest's time from receiving PREPARE to sending READY,
	// in ns.
	TookNS int64 `json:"took_ns,omitempty"`
}

// Apps is AppsNS as a duration.
func (t Timing) Apps() time.Duration { return time.Duration(t.AppsNS) }

// Took is TookNS as a duration.
func (t Timing) Took() time.Duration { return time.Duration(t.TookNS) }

// checkTiming validates a READY's timing: each figure in [0, MaxDeadline],
// the applications' part within the whole.
func (m Message) checkTiming() error {
	t := m.Timing
	switch {
	case t.AppsNS < 0 || t.AppsNS > int64(MaxDeadline):
		return m.bad("apps_ns %d out of range", t.AppsNS)
	case t.TookNS < 0 || t.TookNS > int64(MaxDeadline):
		return m.bad("took_ns %d out of range", t.TookNS)
	case t.AppsNS > t.TookNS && t.TookNS != 0:
		return m.bad("apps_ns %d above took_ns %d", t.AppsNS, t.TookNS)
	}
	return nil
}

// PrepareTimed is Prepare that also returns the guest's Timing from its
// READY (zero from a guest that sends none).
func (h *Host) PrepareTimed(ctx context.Context, p Prepare) (Timing, error) {
	r, err := h.prepare(ctx, p)
	if err != nil {
		return Timing{}, err
	}
	if r.Type == TypeRefused {
		return Timing{}, &RefusedError{ID: p.ID, Reason: r.Reason}
	}
	return r.Timing, nil
}

// ReadyTiming is the Timing a guest puts in READY.
func ReadyTiming(apps, took time.Duration) Timing {
	return Timing{AppsNS: max(0, min(int64(apps), int64(took))), TookNS: max(0, int64(took))}
}

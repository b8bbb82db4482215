package guestd

import "time"

// An application's own time to reach its safe point runs from when it
// could know of the round to its SYNC: from the round's start, or, for an
// application blocked in WAIT when the round began, from the PENDING answer
// (the notification is guestd's work, not the application's). A polling
// application's wait for its next poll is its own: it polls at its safe
// points. The round's figure is the longest of its registered
// applications', the part of a round no cooperation machinery can remove.

// syncedLocked records c's SYNC at now and returns its own time. The
// server's mu is held.
func (r *hookRound) syncedLocked(c *hookConn, now time.Time) time.Duration {
	from := r.begun
	if c.told.After(from) {
		from = c.told
	}
	own := max(0, now.Sub(from))
	if c.registered {
		r.apps = max(r.apps, own)
	}
	return own
}

// AppsTime is the longest own time a registered application of round id
// took to reach its safe point (0 if none has, or id is not pending).
func (s *HookServer) AppsTime(id string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.id != id {
		return 0
	}
	return s.cur.apps
}

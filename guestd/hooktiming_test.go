package guestd

import (
	"context"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestproto"
)

// TestAppOwnTimeRule: an application's own time runs from the round's start,
// or from the PENDING answer to its blocked WAIT if that came later; only
// registered applications make the round's figure, the longest of them.
func TestAppOwnTimeRule(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	r := &hookRound{begun: t0}
	poller := &hookConn{registered: true}
	waiter := &hookConn{registered: true, told: ms(30)}
	stale := &hookConn{registered: true, told: t0.Add(-time.Second)} // told in an earlier round
	looker := &hookConn{}                                            // not registered
	for _, c := range []struct {
		c    *hookConn
		at   time.Time
		want time.Duration
	}{
		{poller, ms(40), 40 * time.Millisecond},
		{waiter, ms(50), 20 * time.Millisecond},
		{stale, ms(10), 10 * time.Millisecond},
		{looker, ms(90), 90 * time.Millisecond},
	} {
		if got := r.syncedLocked(c.c, c.at); got != c.want {
			t.Errorf("own time %v, want %v", got, c.want)
		}
	}
	if r.apps != 40*time.Millisecond {
		t.Errorf("round's apps time %v, want 40ms (the longest registered)", r.apps)
	}
}

// TestAppsTimeOverTheSocket: a registered application blocked in WAIT that
// takes a while after PENDING before its SYNC is timed from the PENDING,
// and AppsTime reports it for the round, only while it is pending.
func TestAppsTimeOverTheSocket(t *testing.T) {
	s, path := newHookServer(t)
	c := dialRaw(t, path)
	c.expect("HELLO app1 1", "OK 1")
	c.send("WAIT")
	// The WAIT must be blocked when the round begins; nothing shows that
	// it is, so give the server ample time to read it.
	time.Sleep(200 * time.Millisecond)
	s.Begin("checkpoint", "r1")
	c.expect("", "PENDING checkpoint r1")
	const work = 30 * time.Millisecond
	time.Sleep(work)
	c.send("SYNC")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	told, begun := time.Time{}, s.cur.begun
	for hc := range s.conns {
		told = hc.told
	}
	s.mu.Unlock()
	if told.IsZero() || told.Before(begun) {
		t.Errorf("the blocked WAIT's notification was not recorded (told %v, begun %v)", told, begun)
	}
	if got := s.AppsTime("r1"); got < work {
		t.Errorf("AppsTime = %v, want at least the application's %v", got, work)
	}
	if got := s.AppsTime("other"); got != 0 {
		t.Errorf("AppsTime of a round not pending = %v", got)
	}
	s.Finish("r1", "aborted")
	c.expect("", "OUTCOME aborted checkpoint r1")
	if got := s.AppsTime("r1"); got != 0 {
		t.Errorf("AppsTime after the round = %v", got)
	}
}

// TestReadyCarriesAppsTime: READY tells the host how long the registered
// application took to reach its safe point, within the guest's whole time.
func TestReadyCarriesAppsTime(t *testing.T) {
	e := startGuestd(t, nil)
	app := e.app("slow")
	h, _ := e.host()
	const work = 40 * time.Millisecond
	go func() {
		if _, err := app.Wait(context.Background()); err != nil {
			t.Errorf("Wait: %v", err)
			return
		}
		time.Sleep(work)
		if _, err := app.Sync(context.Background()); err != nil {
			t.Errorf("Sync: %v", err)
		}
	}()
	time.Sleep(200 * time.Millisecond) // the WAIT blocks before the round
	tm, err := h.PrepareTimed(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "t1", Op: guestproto.OpDetach, Deadline: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if tm.Apps() < work || tm.Took() < tm.Apps() {
		t.Errorf("READY timing %+v: want apps >= %v and took >= apps", tm, work)
	}
	if err := h.Abort(ctxFor(t, 10*time.Second), "t1", "drill"); err != nil {
		t.Fatal(err)
	}
}

package guestd

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestproto"
)

// A RESUME from a host whose clock is ahead (the VM was away) steps the
// guest's clock to it before the applications hear the outcome; one within
// clockStepMin leaves it alone.
func TestResumeStepsClock(t *testing.T) {
	for _, c := range []struct {
		skew time.Duration
		step bool
	}{{30 * time.Second, true}, {-5 * time.Second, true}, {50 * time.Millisecond, false}} {
		t.Run(c.skew.String(), func(t *testing.T) {
			var mu sync.Mutex
			var set []time.Time
			e := startGuestd(t, func(cfg *Config) {
				cfg.setClock = func(at time.Time) error {
					mu.Lock()
					defer mu.Unlock()
					set = append(set, at)
					return nil
				}
			})
			conn, err := net.Dial("unix", e.chanPath)
			if err != nil {
				t.Fatal(err)
			}
			var sent time.Time
			h := guestproto.NewHost(conn, testLogger(t), guestproto.WithClock(func() time.Time {
				sent = time.Now().Add(c.skew)
				return sent
			}))
			t.Cleanup(func() { h.Close() })
			if _, err := h.Handshake(ctxFor(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
			app := e.app("solver")
			out := cooperate(t, app)
			if err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r1", Op: guestproto.OpRestore, Deadline: 5 * time.Second}); err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if err := h.Resume(ctxFor(t, 10*time.Second), "r1", guestproto.OutcomeRestored); err != nil {
				t.Fatalf("Resume: %v", err)
			}
			recvOutcome(t, out)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case c.step && (len(set) != 1 || !set[0].Equal(sent)):
				t.Errorf("clock set to %v, want once to the host's %v", set, sent)
			case !c.step && len(set) != 0:
				t.Errorf("clock set to %v with the host %v away", set, c.skew)
			}
		})
	}
}

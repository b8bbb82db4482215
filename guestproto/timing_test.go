package guestproto

import (
	"errors"
	"testing"
	"time"
)

func TestTimingValidation(t *testing.T) {
	ready := func(tm Timing) Message { return Message{V: Version, Type: TypeReady, ID: "r1", Timing: tm} }
	for _, tm := range []Timing{{}, {TookNS: 5}, {AppsNS: 3, TookNS: 5}, {AppsNS: int64(MaxDeadline), TookNS: int64(MaxDeadline)}} {
		if err := ready(tm).Validate(); err != nil {
			t.Errorf("%+v: %v", tm, err)
		}
	}
	for _, tm := range []Timing{{AppsNS: -1, TookNS: 5}, {TookNS: -1}, {AppsNS: 6, TookNS: 5},
		{TookNS: int64(MaxDeadline) + 1}, {AppsNS: int64(MaxDeadline) + 1}} {
		if err := ready(tm).Validate(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%+v: %v, want ErrMalformed", tm, err)
		}
	}
	// Only READY carries it.
	m := Message{V: Version, Type: TypeDone, ID: "r1", Timing: Timing{TookNS: 1}}
	if err := m.Validate(); !errors.Is(err, ErrMalformed) {
		t.Errorf("DONE with timing: %v, want ErrMalformed", err)
	}
	b, err := Encode(ready(Timing{AppsNS: 7, TookNS: 9}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decode(b[4:])
	if err != nil || got.Timing != (Timing{AppsNS: 7, TookNS: 9}) {
		t.Fatalf("decode: %+v, %v", got.Timing, err)
	}
	if tm := ReadyTiming(3*time.Second, 2*time.Second); tm.Apps() != 2*time.Second || tm.Took() != 2*time.Second {
		t.Errorf("ReadyTiming clamps apps to took: %+v", tm)
	}
}

// TestPrepareTimed: the host gets the guest's timing from READY, and a
// guest that sends none gives zero.
func TestPrepareTimed(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	for i, want := range []Timing{{AppsNS: int64(40 * time.Millisecond), TookNS: int64(45 * time.Millisecond)}, {}} {
		id := []string{"r1", "r2"}[i]
		go func() {
			m := g.read()
			g.send(Message{V: Version, Type: TypeReady, ID: m.ID, Timing: want})
			if m := g.read(); m.Type == TypeAbort {
				g.send(Message{V: Version, Type: TypeDone, ID: m.ID})
			}
		}()
		got, err := h.PrepareTimed(ctxT(t, 5*time.Second), Prepare{ID: id, Op: OpDetach, Deadline: 2 * time.Second})
		if err != nil || got != want {
			t.Fatalf("PrepareTimed = %+v, %v; want %+v", got, err, want)
		}
		if err := h.Abort(ctxT(t, 5*time.Second), id, "drill"); err != nil {
			t.Fatal(err)
		}
	}
}

package guestproto

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"
)

// RESUME carries the host's clock; it is only valid there, and only in a
// sane range (a guest steps its clock to it).
func TestHostTimeValidation(t *testing.T) {
	in := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC).UnixNano()
	ok := []string{
		`{"v":1,"type":"RESUME","id":"r","outcome":"restored"}`,
		fmt.Sprintf(`{"v":1,"type":"RESUME","id":"r","outcome":"restored","host_time_ns":%d}`, in),
		fmt.Sprintf(`{"v":1,"type":"RESUME","id":"r","outcome":"migrated","host_time_ns":%d}`, MinHostTimeNS),
	}
	for _, b := range ok {
		m, err := ReadFrame(bytes.NewReader(frameOf(b)))
		if err != nil {
			t.Errorf("%s: %v", b, err)
		}
		if m.HostTimeNS != 0 && m.HostTime().UnixNano() != m.HostTimeNS {
			t.Errorf("%s: HostTime %v", b, m.HostTime())
		}
	}
	bad := []string{
		`{"v":1,"type":"RESUME","id":"r","outcome":"restored","host_time_ns":-1}`,
		`{"v":1,"type":"RESUME","id":"r","outcome":"restored","host_time_ns":1000}`,
		fmt.Sprintf(`{"v":1,"type":"RESUME","id":"r","outcome":"restored","host_time_ns":%d}`, MaxHostTimeNS+1),
		`{"v":1,"type":"RESUME","id":"r","outcome":"restored","host_time_ns":"now"}`,
		fmt.Sprintf(`{"v":1,"type":"ABORT","id":"r","reason":"x","host_time_ns":%d}`, in),
		fmt.Sprintf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"host_time_ns":%d}`, in),
		fmt.Sprintf(`{"v":1,"type":"PING","host_time_ns":%d}`, in),
	}
	for _, b := range bad {
		if _, err := ReadFrame(bytes.NewReader(frameOf(b))); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", b, err)
		}
	}
}

func TestResumeSendsHostClock(t *testing.T) {
	at := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	h, g := newPair(t, WithClock(func() time.Time { return at }))
	handshake(t, h, g)
	go func() {
		m := g.read()
		if m.Type != TypeResume || !m.HostTime().Equal(at) {
			t.Errorf("guest got %+v, want RESUME with host time %v", m, at)
		}
		g.send(Message{V: Version, Type: TypeDone, ID: m.ID})
	}()
	if err := h.Resume(ctxT(t, 5*time.Second), "r1", OutcomeRestored); err != nil {
		t.Fatalf("Resume: %v", err)
	}
}

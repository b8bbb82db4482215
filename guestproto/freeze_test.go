package guestproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"
)

func TestFreezeRoundTrip(t *testing.T) {
	m := Message{V: 1, Type: TypePrepare, ID: "mig1", Op: OpMigrate, DeadlineMS: 5000, Freeze: true}
	f, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(f, []byte(`"freeze":true`)) {
		t.Errorf("encoded PREPARE %q lacks \"freeze\":true", f[4:])
	}
	got, err := ReadFrame(bytes.NewReader(f))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("round trip: got %+v, want %+v", got, m)
	}

	// A plain PREPARE keeps its old wire form: an old guest sees nothing new.
	m.Freeze = false
	f, err = Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(f, []byte("freeze")) {
		t.Errorf("PREPARE without freeze encodes the field: %q", f[4:])
	}
}

// Frames of old peers (no "freeze") and of new ones (explicit false) decode
// as no freeze; "freeze" is only valid on PREPARE of op migrate.
func TestFreezeValidation(t *testing.T) {
	ok := []struct {
		body   string
		freeze bool
	}{
		{`{"v":1,"type":"PREPARE","id":"r","op":"migrate","deadline_ms":5}`, false},
		{`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"freeze":false}`, false},
		{`{"v":1,"type":"PREPARE","id":"r","op":"migrate","deadline_ms":5,"freeze":true}`, true},
		{`{"v":1,"type":"READY","id":"r","freeze":false}`, false},
	}
	for _, c := range ok {
		m, err := ReadFrame(bytes.NewReader(frameOf(c.body)))
		if err != nil {
			t.Errorf("%s: %v", c.body, err)
			continue
		}
		if m.Freeze != c.freeze {
			t.Errorf("%s: Freeze = %v, want %v", c.body, m.Freeze, c.freeze)
		}
	}
	bad := []string{
		`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5,"freeze":true}`,
		`{"v":1,"type":"PREPARE","id":"r","op":"detach","deadline_ms":5,"freeze":true}`,
		`{"v":1,"type":"PREPARE","id":"r","op":"migrate","deadline_ms":5,"freeze":"yes"}`,
		`{"v":1,"type":"PREPARE","id":"r","op":"migrate","deadline_ms":5,"freeze":1}`,
		`{"v":1,"type":"READY","id":"r","freeze":true}`,
		`{"v":1,"type":"RESUME","id":"r","outcome":"migrated","freeze":true}`,
		`{"v":1,"type":"PING","freeze":true}`,
	}
	for _, b := range bad {
		if _, err := ReadFrame(bytes.NewReader(frameOf(b))); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", b, err)
		}
	}
	// The encoder checks the same: a host cannot send what a guest refuses.
	if err := WriteFrame(io.Discard, Message{V: 1, Type: TypePrepare, ID: "r", Op: OpCheckpoint, DeadlineMS: 5, Freeze: true}); !errors.Is(err, ErrMalformed) {
		t.Errorf("WriteFrame(freeze with checkpoint) = %v, want ErrMalformed", err)
	}
}

// An old guest decodes with a struct that has no Freeze: unknown keys are
// ignored, so the new field does not break it.
func TestFreezeIgnoredByOldGuest(t *testing.T) {
	f, err := Encode(Message{V: 1, Type: TypePrepare, ID: "r", Op: OpMigrate, DeadlineMS: 5, Freeze: true})
	if err != nil {
		t.Fatal(err)
	}
	var old struct {
		V          int    `json:"v"`
		Type       string `json:"type"`
		ID         string `json:"id"`
		Op         string `json:"op"`
		DeadlineMS int64  `json:"deadline_ms"`
	}
	if err := json.Unmarshal(f[4:], &old); err != nil || old.Type != TypePrepare || old.Op != OpMigrate {
		t.Errorf("old decoder: %+v, %v", old, err)
	}
}

func TestHostPrepareSendsFreeze(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	go func() {
		m := g.read()
		if m.Type != TypePrepare || m.Op != OpMigrate || !m.Freeze {
			t.Errorf("guest got %+v, want PREPARE migrate with freeze", m)
		}
		g.send(Message{V: Version, Type: TypeReady, ID: m.ID})
	}()
	if err := h.Prepare(ctxT(t, 5*time.Second), Prepare{ID: "m1", Op: OpMigrate, Deadline: 2 * time.Second, Freeze: true}); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	// Freeze with another op is rejected before anything is sent.
	err := h.Prepare(ctxT(t, 5*time.Second), Prepare{ID: "c1", Op: OpCheckpoint, Deadline: 2 * time.Second, Freeze: true})
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("Prepare(checkpoint, freeze) = %v, want ErrMalformed", err)
	}
}

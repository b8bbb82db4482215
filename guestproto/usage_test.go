package guestproto

import (
	"errors"
	"testing"
)

func TestUsageValidation(t *testing.T) {
	ack := func(u Usage) Message {
		return Message{V: Version, Type: TypeHelloAck, State: StateIdle, Usage: u}
	}
	for _, u := range []Usage{{}, {MemUsed: 1, MemTotal: 2}, {MemUsed: 0, MemTotal: MaxMemBytes}} {
		if err := ack(u).Validate(); err != nil {
			t.Errorf("%+v: %v", u, err)
		}
	}
	for _, u := range []Usage{{MemUsed: 3, MemTotal: 2}, {MemUsed: -1, MemTotal: 2}, {MemUsed: 1},
		{MemUsed: 1, MemTotal: MaxMemBytes + 1}} {
		if err := ack(u).Validate(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%+v: %v, want ErrMalformed", u, err)
		}
	}
	// Only HELLO_ACK carries it.
	m := Message{V: Version, Type: TypePong, Usage: Usage{MemUsed: 1, MemTotal: 2}}
	if err := m.Validate(); !errors.Is(err, ErrMalformed) {
		t.Errorf("PONG with usage: %v, want ErrMalformed", err)
	}
	// Round trip through the wire decoder.
	b, err := Encode(ack(Usage{MemUsed: 5 << 20, MemTotal: 64 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decode(b[4:])
	if err != nil || got.Usage != (Usage{MemUsed: 5 << 20, MemTotal: 64 << 20}) {
		t.Fatalf("decode: %+v, %v", got.Usage, err)
	}
}

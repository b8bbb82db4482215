package guestd

import (
	"testing"

	"github.com/symvirt/symvirt/guestproto"
)

func TestParseMeminfo(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want guestproto.Usage
	}{
		{"MemTotal:  100 kB\nMemFree: 10 kB\nMemAvailable:  40 kB\n", guestproto.Usage{MemUsed: 60 << 10, MemTotal: 100 << 10}},
		{"MemTotal:  100 kB\n", guestproto.Usage{}},
		{"MemTotal:  100 kB\nMemAvailable: 200 kB\n", guestproto.Usage{}},
		{"garbage", guestproto.Usage{}},
	} {
		if got := parseMeminfo([]byte(tc.in)); got != tc.want {
			t.Errorf("parseMeminfo(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	// Whatever it reports is a valid HELLO_ACK.
	m := guestproto.Message{V: guestproto.Version, Type: guestproto.TypeHelloAck, State: guestproto.StateIdle, Usage: memUsage()}
	if err := m.Validate(); err != nil {
		t.Fatalf("this machine's report: %v", err)
	}
}

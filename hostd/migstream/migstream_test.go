package migstream

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckMigrationURI(t *testing.T) {
	ports := PortRange{Lo: 49152, Hi: 49407}
	for _, c := range []struct {
		uri, dest string
		ok        bool
		why       string // in the error
	}{
		{"tcp:10.0.0.2:49152", "10.0.0.2:7070", true, ""},
		{"tcp:10.0.0.2:49407", "10.0.0.2:7070", true, ""},
		{"tcp:[fd00::2]:49200", "[fd00::2]:7070", true, ""},
		{"tcp:[fd00:0::2]:49200", "[fd00::2]:7070", true, ""},
		{"tcp:b.example:49200", "B.example:7070", true, ""},
		{"tcp:127.0.0.1:49200", "/run/symvirt/hostd.sock", true, ""},
		{"tcp:[::1]:49200", "unix:/run/hostd.sock", true, ""},
		{"exec:touch /tmp/x", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
		{"exec:touch /tmp/x", "/run/hostd.sock", false, "want tcp:HOST:PORT"},
		{"unix:/tmp/s", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
		{"fd:3", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
		{"rdma:10.0.0.2:49200", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
		{"TCP:10.0.0.2:49200", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
		{"tcp:10.0.0.3:49200", "10.0.0.2:7070", false, "not the destination's"},
		{"tcp:evil.example:49200", "10.0.0.2:7070", false, "not the destination's"},
		{"tcp:10.0.0.2:49151", "10.0.0.2:7070", false, "outside migration_ports"},
		{"tcp:10.0.0.2:49408", "10.0.0.2:7070", false, "outside migration_ports"},
		{"tcp:10.0.0.2:22", "10.0.0.2:7070", false, "outside migration_ports"},
		{"tcp:10.0.0.2:049200", "10.0.0.2:7070", false, "not a number"},
		{"tcp:10.0.0.2:+49200", "10.0.0.2:7070", false, "not a number"},
		{"tcp:10.0.0.2:49200,ipv4=on", "10.0.0.2:7070", false, "options"},
		{"tcp:10.0.0.2", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
		{"tcp::49200", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
		{"tcp:10.0.0.2:49200", "/run/hostd.sock", false, "loopback"},
		{"tcp:localhost:49200", "/run/hostd.sock", false, "loopback"},
		{"", "10.0.0.2:7070", false, "want tcp:HOST:PORT"},
	} {
		host, err := CheckURI(c.uri, c.dest, ports)
		if c.ok {
			if err != nil || host == "" {
				t.Errorf("%q to %s: %v, want accepted", c.uri, c.dest, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q to %s: accepted, want refused (%s)", c.uri, c.dest, c.why)
			continue
		}
		if !errors.Is(err, ErrBadURI) || !strings.Contains(err.Error(), c.why) || !strings.Contains(err.Error(), c.uri) {
			t.Errorf("%q to %s: %v, want ErrBadURI naming the URI and %q", c.uri, c.dest, err, c.why)
		}
	}
}

func TestFreePortInRange(t *testing.T) {
	r := PortRange{Lo: 49152, Hi: 49407}
	for range 20 {
		p, err := FreePort("127.0.0.1", r)
		if err != nil || !r.Contains(p) {
			t.Fatalf("FreePort: %d %v, want a port in %s", p, err, r)
		}
	}
}

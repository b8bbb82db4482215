package hostd

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckMigrationURI(t *testing.T) {
	ports := portRange{49152, 49407}
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
		host, err := checkMigrationURI(c.uri, c.dest, ports)
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
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), c.why) || !strings.Contains(err.Error(), c.uri) {
			t.Errorf("%q to %s: %v, want ErrUnauthorized naming the URI and %q", c.uri, c.dest, err, c.why)
		}
	}
}

func TestMigrationConfig(t *testing.T) {
	for _, c := range []struct {
		ports   string
		want    portRange
		wantErr bool
	}{
		{"", portRange{49152, 49407}, false},
		{"50000-50010", portRange{50000, 50010}, false},
		{"50000", portRange{50000, 50000}, false},
		{"50010-50000", portRange{}, true},
		{"0-10", portRange{}, true},
		{"1-70000", portRange{}, true},
		{"a-b", portRange{}, true},
	} {
		cfg := Config{StateDir: t.TempDir(), MigrationPorts: c.ports}
		err := cfg.setDefaults()
		if c.wantErr {
			if err == nil || !strings.Contains(err.Error(), "migration_ports") {
				t.Errorf("migration_ports %q: %v, want an error naming migration_ports", c.ports, err)
			}
			continue
		}
		if err != nil || cfg.migrationPorts() != c.want {
			t.Errorf("migration_ports %q: %v %v, want %v", c.ports, err, cfg.migrationPorts(), c.want)
		}
	}
	// Migration TLS follows the API's TLS unless turned off, and needs
	// all three files.
	cfg := Config{StateDir: t.TempDir()}
	if cfg.setDefaults(); cfg.migrationTLS() {
		t.Error("migration tls on without certificates")
	}
	cfg = Config{StateDir: t.TempDir(), TLSCert: "c", TLSKey: "k", TLSCA: "ca"}
	if err := cfg.setDefaults(); err != nil || !cfg.migrationTLS() {
		t.Errorf("with certificates: %v, tls %v; want on", err, cfg.migrationTLS())
	}
	off := false
	cfg = Config{StateDir: t.TempDir(), TLSCert: "c", TLSKey: "k", TLSCA: "ca", MigrationTLS: &off}
	if err := cfg.setDefaults(); err != nil || cfg.migrationTLS() {
		t.Errorf("turned off: %v, tls %v", err, cfg.migrationTLS())
	}
	on := true
	cfg = Config{StateDir: t.TempDir(), TLSCert: "c", MigrationTLS: &on}
	if err := cfg.setDefaults(); err == nil || !strings.Contains(err.Error(), "tls_key") {
		t.Errorf("on without a key: %v", err)
	}
}

func TestFreePortInRange(t *testing.T) {
	r := portRange{49152, 49407}
	for range 20 {
		p, err := freePort("127.0.0.1", r)
		if err != nil || !r.contains(p) {
			t.Fatalf("freePort: %d %v, want a port in %s", p, err, r)
		}
	}
}

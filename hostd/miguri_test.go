package hostd

import (
	"errors"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/hostd/migstream"
)

func TestMigrationConfig(t *testing.T) {
	for _, c := range []struct {
		ports   string
		want    migstream.PortRange
		wantErr bool
	}{
		{"", migstream.PortRange{Lo: 49152, Hi: 49407}, false},
		{"50000-50010", migstream.PortRange{Lo: 50000, Hi: 50010}, false},
		{"50000", migstream.PortRange{Lo: 50000, Hi: 50000}, false},
		{"50010-50000", migstream.PortRange{}, true},
		{"0-10", migstream.PortRange{}, true},
		{"1-70000", migstream.PortRange{}, true},
		{"a-b", migstream.PortRange{}, true},
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

// A bad stream address is refused as unauthorized, the code a remote
// caller gets back.
func TestCheckMigrationURIIsUnauthorized(t *testing.T) {
	ports := migstream.PortRange{Lo: 49152, Hi: 49407}
	if _, err := checkMigrationURI("exec:sh -c reboot", "10.0.0.2:7000", ports); !errors.Is(err, ErrUnauthorized) || !errors.Is(err, migstream.ErrBadURI) {
		t.Errorf("exec: URI: %v, want ErrUnauthorized and ErrBadURI", err)
	}
	if host, err := checkMigrationURI("tcp:10.0.0.2:49152", "10.0.0.2:7000", ports); err != nil || host != "10.0.0.2" {
		t.Errorf("good URI: %q %v", host, err)
	}
}

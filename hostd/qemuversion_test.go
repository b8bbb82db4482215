package hostd

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hostd refuses to run a QEMU older than 7.2, naming the binary and its
// version; a newer one starts it.
func TestHostdRefusesOldQEMU(t *testing.T) {
	old := fakeQEMU(t, "6.2.0")
	_, err := New(Config{StateDir: t.TempDir(), QEMU: old})
	if !errors.Is(err, ErrQEMUStart) || !strings.Contains(err.Error(), old+" is QEMU 6.2.0, older than 7.2") {
		t.Fatalf("hostd on QEMU 6.2: %v", err)
	}
	h, err := New(Config{StateDir: t.TempDir(), QEMU: fakeQEMU(t, "10.0.2")})
	if err != nil {
		t.Fatalf("hostd on QEMU 10.0: %v", err)
	}
	h.Close()
}

// live_mode auto is precopy under TCG on QEMU 10 (its precopy images are
// exact there), snapshot on 7.2; a live_mode set in the config stays.
func TestLiveModeAutoFollowsQEMUVersion(t *testing.T) {
	for _, c := range []struct{ version, mode, want string }{
		{"7.2.22", "", "snapshot"}, {"10.0.2", "", "precopy"}, {"10.0.2", "auto", "precopy"},
		{"10.0.2", "snapshot", "snapshot"}, {"7.2.22", "precopy", "precopy"},
	} {
		h, err := New(Config{StateDir: t.TempDir(), QEMU: fakeQEMU(t, c.version), LiveMode: c.mode})
		if err != nil {
			t.Fatal(err)
		}
		if h.cfg.LiveMode != c.want {
			t.Errorf("QEMU %s, live_mode %q: %s, want %s", c.version, c.mode, h.cfg.LiveMode, c.want)
		}
		h.Close()
	}
}

// Under TCG, hostd on a QEMU whose precopy loses guest writes says so at
// start (live migrations are precopies); on QEMU 10, or under KVM, not.
func TestHostdWarnsOfLossyTCGPrecopy(t *testing.T) {
	for _, c := range []struct {
		version, accel string
		warn           bool
	}{{"7.2.22", "tcg", true}, {"10.0.2", "tcg", false}, {"7.2.22", "kvm", false}} {
		var log bytes.Buffer
		h, err := New(Config{StateDir: t.TempDir(), QEMU: fakeQEMU(t, c.version), Accel: c.accel,
			Logger: slog.New(slog.NewTextHandler(&log, nil))})
		if err != nil {
			t.Fatal(err)
		}
		h.Close()
		if got := strings.Contains(log.String(), "precopy can lose guest writes"); got != c.warn {
			t.Errorf("QEMU %s under %s: warned %v, want %v:\n%s", c.version, c.accel, got, c.warn, log.String())
		}
	}
}

// fakeQEMU is a binary that answers --version as QEMU version would.
func fakeQEMU(t *testing.T, version string) string {
	p := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	script := "#!/bin/sh\necho 'QEMU emulator version " + version + " (Debian test)'\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

package testguest

import (
	"os/exec"
	"strings"
	"sync"
	"testing"
)

var qemuVersion = sync.OnceValues(func() (string, error) {
	out, err := exec.Command(Qemu, "--version").Output()
	if err != nil {
		return "", err
	}
	// "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)"
	line, _, _ := strings.Cut(string(out), "\n")
	f := strings.Fields(strings.TrimPrefix(line, "QEMU emulator version "))
	if len(f) == 0 {
		return strings.TrimSpace(line), nil
	}
	return f[0], nil
})

// QemuVersion is Qemu's version (e.g. "10.0.2"), for benchmark lines to
// say which QEMU they measured.
func QemuVersion(t testing.TB) string {
	t.Helper()
	v, err := qemuVersion()
	if err != nil {
		t.Fatalf("%s --version: %v", Qemu, err)
	}
	return v
}

package hostd

import (
	"cmp"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestPlaceholderKernelPowersOff boots the clones' placeholder kernel in
// a QEMU of the clones' machine: QEMU takes it as a Linux kernel (it adds
// the option ROM a template's state holds) and the guest, which is what a
// clone whose guest rebooted runs, powers the machine off, so QEMU exits
// by itself.
func TestPlaceholderKernelPowersOff(t *testing.T) {
	k := filepath.Join(t.TempDir(), placeholderKernelName)
	if err := os.WriteFile(k, placeholderKernel(), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bin := cmp.Or(os.Getenv("SYMVIRT_QEMU"), "qemu-system-x86_64")
	out, err := exec.CommandContext(ctx, bin, "-machine", "q35", "-accel", "tcg", "-m", "64M",
		"-nodefaults", "-no-user-config", "-display", "none", "-kernel", k,
		"-qmp", "unix:"+filepath.Join(t.TempDir(), "qmp.sock")+",server=on,wait=off").CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("QEMU still runs the placeholder kernel after a minute: it did not power off (%s)", out)
	}
	if err != nil {
		t.Fatalf("QEMU refused the placeholder kernel: %v: %s", err, out)
	}
}

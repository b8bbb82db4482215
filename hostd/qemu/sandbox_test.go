package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testguest"
	"github.com/symvirt/symvirt/qmp"
)

// TestSandboxStopsExecMigration: an exec: migration URI (what a rogue
// migration peer would answer) makes a bare QEMU run a command as root;
// under hostd's sandbox QEMU cannot spawn it. The first run, without the
// sandbox, is the control showing the attack works.
func TestSandboxStopsExecMigration(t *testing.T) {
	testguest.Paths(t) // skips without QEMU
	if testing.Short() {
		t.Skip("starts QEMU")
	}
	for _, sandboxed := range []bool{false, true} {
		dir := t.TempDir()
		marker := filepath.Join(dir, "pwned")
		sock := filepath.Join(dir, "qmp.sock")
		args := []string{"-machine", "q35", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-S",
			"-qmp", "unix:" + sock + ",server=on,wait=off"}
		if sandboxed {
			args = append(args, confineArgs("", false)...)
		}
		cmd := exec.Command(testguest.Qemu, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		mon := dialRetry(ctx, t, sock)
		err := mon.Migrate(ctx, "exec:touch "+marker)
		mon.Close()
		// Either QEMU refuses or it dies on the forbidden fork; give a
		// spawned shell time to run before looking.
		select {
		case <-exited:
		case <-time.After(2 * time.Second):
		}
		_, statErr := os.Stat(marker)
		switch {
		case !sandboxed && statErr != nil:
			t.Fatalf("control: without the sandbox exec: did not run (%v, migrate: %v)", statErr, err)
		case sandboxed && statErr == nil:
			t.Fatalf("sandboxed qemu ran an exec: migration URI")
		}
		t.Logf("sandboxed=%v: migrate exec: -> %v; marker exists: %v", sandboxed, err, statErr == nil)
	}
}

func dialRetry(ctx context.Context, t *testing.T, sock string) *qmp.Client {
	for {
		mon, err := qmp.Dial(ctx, "unix", sock)
		if err == nil {
			return mon
		}
		if ctx.Err() != nil || !strings.Contains(err.Error(), "no such file") && !strings.Contains(err.Error(), "refused") {
			t.Fatalf("qmp: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

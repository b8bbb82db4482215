package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/libsymvirt/pmpi/mpitest"
)

// TestFortranBinding runs libsymvirt/fortran/test_symvirt.f90, which calls
// every procedure of the Fortran module, against a real hook server: a bad
// name and a null handle fail cleanly, poll and sync without an operation,
// wait until one is pending, poll into a short buffer (truncated) or none,
// sync and its outcome, outcome names, close.
func TestFortranBinding(t *testing.T) {
	mpitest.Require(t, "gfortran")
	root := testenv.RepoRoot(t)
	mpitest.Make(t, "libsymvirt", "libsymvirt.a")
	dir := t.TempDir()
	bin := filepath.Join(dir, "test_symvirt")
	src := filepath.Join(root, "libsymvirt/fortran")
	out, err := exec.Command("gfortran", "-Wall", "-Werror", "-std=f2008", "-J", dir, "-o", bin,
		filepath.Join(src, "symvirt.f90"), filepath.Join(src, "test_symvirt.f90"),
		filepath.Join(root, "libsymvirt/libsymvirt.a")).CombinedOutput()
	if err != nil {
		t.Fatalf("gfortran: %v\n%s", err, out)
	}

	sockDir, err := os.MkdirTemp("", "symvirt-f")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "hook.sock")
	srv, err := guestd.NewHookServer(sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "SYMVIRT_HOOK_SOCKET="+sock)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), " ")
		}
	}()
	expect := func(want ...string) {
		t.Helper()
		for _, w := range want {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("program ended; want %q", w)
				}
				if l != w {
					t.Fatalf("got %q, want %q", l, w)
				}
			case <-time.After(mpitest.Timeout):
				t.Fatalf("no line %q", w)
			}
		}
	}
	expect("bad-name-open F", "null-poll -1", "open T", "idle-poll 0", "idle-sync 6 none")
	srv.Begin("checkpoint", "c1")
	expect("wait 1 checkpoint", "poll-short-buffer 1 ch", "poll-no-buffer 1")
	ctx, cancel := context.WithTimeout(context.Background(), mpitest.Timeout)
	defer cancel()
	if err := srv.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Finish("c1", "checkpointed")
	expect("sync 0 checkpointed checkpointed", "is-checkpointed T", "name-99 unknown", "closed F")
}

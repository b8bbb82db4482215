// End-to-end test of libsymvirt: the static example program, built with make,
// talks to the real guest agent hook server over a temporary socket.
package hook_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestd"
)

const timeout = 10 * time.Second

// buildHook builds libsymvirt and ./hook with their Makefiles.
func buildHook(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"gcc", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not found; building libsymvirt and the hook example needs a C toolchain", tool)
		}
	}
	out, err := exec.Command("make", "CC=gcc", "hook").CombinedOutput()
	if err != nil {
		t.Fatalf("make hook: %v\n%s(static linking needs libc.a: Debian package libc6-dev)", err, out)
	}
	bin, err := filepath.Abs("hook")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// program is a running ./hook whose stdout lines arrive on lines.
type program struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr bytes.Buffer
}

func startHook(t *testing.T, bin, sock string) *program {
	t.Helper()
	p := &program{lines: make(chan string, 100)}
	// 0 iterations: run until killed, so timing never ends the test early.
	p.cmd = exec.Command(bin, "hooktest", "0")
	p.cmd.Env = append(os.Environ(), "SYMVIRT_HOOK_SOCKET="+sock)
	p.cmd.Stderr = &p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT) // a stopped process cannot die
		_ = p.cmd.Process.Kill()
		for range p.lines { // let Wait close the pipe after the reader is done
		}
		_ = p.cmd.Wait()
		if p.stderr.Len() > 0 {
			t.Logf("hook stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

// expect waits for the line want, skipping others (e.g. "hook: registered").
func (p *program) expect(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("hook exited before printing %q; stderr:\n%s", want, p.stderr.String())
			}
			t.Logf("hook stdout: %s", line)
			if line == want {
				return
			}
			if strings.HasPrefix(line, "hook: outcome") || strings.HasPrefix(line, "hook: pending") {
				t.Fatalf("hook printed %q, want %q", line, want)
			}
		case <-deadline:
			t.Fatalf("hook did not print %q within %v", want, timeout)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > timeout {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// stopped tells whether pid is in state T (stopped), as kill(SIGSTOP)
// returns before the target has actually stopped.
func stopped(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'T'
}

func TestHookProgram(t *testing.T) {
	bin := buildHook(t)
	// A short directory: sun_path holds at most 107 bytes.
	dir, err := os.MkdirTemp("", "symvirt-hook")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "hook.sock")

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv, err := guestd.NewHookServer(sock, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	p := startHook(t, bin, sock)
	waitUntil(t, "hook to register", func() bool { return srv.Registered() == 1 })

	// An operation goes through: the program syncs at its next iteration
	// boundary and then learns the outcome.
	round := func(op, id, outcome string) {
		t.Helper()
		srv.Begin(op, id)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := srv.WaitSynced(ctx); err != nil {
			t.Fatalf("%s %s: WaitSynced: %v", op, id, err)
		}
		p.expect(t, "hook: pending "+op)
		srv.Finish(id, outcome)
		p.expect(t, "hook: outcome "+outcome)
	}
	round("checkpoint", "r1", "checkpointed")
	round("restore", "r2", "restored")

	// A program that cannot reach a safe point holds the operation up until
	// the host gives up; when it comes back it learns the operation was
	// aborted.
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "hook to stop", func() bool { return stopped(p.cmd.Process.Pid) })
	srv.Begin("checkpoint", "r3")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err = srv.WaitSynced(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, guestd.ErrNotSynced) {
		t.Fatalf("WaitSynced with the program stopped: got %v, want ErrNotSynced and DeadlineExceeded", err)
	}
	srv.Finish("r3", "aborted")
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	p.expect(t, "hook: pending checkpoint")
	p.expect(t, "hook: outcome aborted")

	if srv.Registered() != 1 {
		t.Errorf("Registered() = %d after the rounds, want 1", srv.Registered())
	}
}

package qmp

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// qemuBin is $SYMVIRT_QEMU (make test-qemu10), else qemu-system-x86_64.
var qemuBin = cmp.Or(os.Getenv("SYMVIRT_QEMU"), "qemu-system-x86_64")

// requireQEMU returns the QEMU binary, skipping the test if it is missing
// unless SYMVIRT_REQUIRE_QEMU=1, in which case the test fails.
func requireQEMU(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath(qemuBin)
	if err != nil {
		if os.Getenv("SYMVIRT_REQUIRE_QEMU") == "1" {
			t.Fatalf("%s not on PATH and SYMVIRT_REQUIRE_QEMU=1: %v", qemuBin, err)
		}
		t.Skipf("skipping QEMU integration test: %s not on PATH (set SYMVIRT_REQUIRE_QEMU=1 to fail instead)", qemuBin)
	}
	return p
}

// syncBuffer is a goroutine-safe bytes.Buffer for QEMU's stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// qemuVM is a QEMU process with a QMP unix socket.
type qemuVM struct {
	t      *testing.T
	cmd    *exec.Cmd
	sock   string
	stderr *syncBuffer
	exited chan struct{}
	err    error // Wait's result, valid after exited is closed
}

// startQEMU starts a paused (-S), diskless, TCG q35 VM with 64 MiB and a QMP
// socket, plus extra arguments. It is killed in t.Cleanup.
func startQEMU(t *testing.T, extra ...string) *qemuVM {
	t.Helper()
	bin := requireQEMU(t)
	// Short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "symvirt-qmp-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "qmp.sock")
	args := []string{
		"-M", "q35", "-accel", "tcg", "-m", "64",
		"-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
	}
	args = append(args, extra...)
	vm := &qemuVM{t: t, sock: sock, stderr: &syncBuffer{}, exited: make(chan struct{})}
	vm.cmd = exec.Command(bin, args...)
	vm.cmd.Stdout = vm.stderr
	vm.cmd.Stderr = vm.stderr
	if err := vm.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		vm.err = vm.cmd.Wait()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-vm.exited:
		default:
			_ = vm.cmd.Process.Kill()
			<-vm.exited
		}
		if t.Failed() {
			t.Logf("QEMU %v\nstderr:\n%s", args, vm.stderr.String())
		}
		os.RemoveAll(dir)
	})
	return vm
}

// dial connects to the VM's monitor, retrying while QEMU creates the socket.
// The client is closed in t.Cleanup.
func (vm *qemuVM) dial(ctx context.Context) *Client {
	vm.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		c, err := Dial(ctx, "unix", vm.sock)
		if err == nil {
			vm.t.Cleanup(func() { c.Close() })
			return c
		}
		select {
		case <-vm.exited:
			vm.t.Fatalf("QEMU exited before QMP was up (%v): %s", vm.err, vm.stderr.String())
		case <-ctx.Done():
			vm.t.Fatalf("dial %s: %v", vm.sock, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitExit waits for the QEMU process to exit.
func (vm *qemuVM) waitExit(d time.Duration) error {
	select {
	case <-vm.exited:
		return nil
	case <-time.After(d):
		return errors.New("QEMU did not exit")
	}
}

package qemu

import (
	"os"
	"os/exec"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// A thread goes under SCHED_RR and back under SCHED_NORMAL with its nice
// value.
func TestSetThreadRealtime(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_NICE)")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	if err := SetThreadNice(tid, 3); err != nil {
		t.Fatal(err)
	}
	defer SetThreadNice(tid, 0)
	if err := SetThreadRealtime(tid, 1); err != nil {
		t.Skipf("no realtime scheduling here: %v", err)
	}
	if p, _, _ := unix.Syscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0); int(p)&^schedResetOnFork != unix.SCHED_RR {
		t.Errorf("policy %d, want SCHED_RR", p)
	}
	if err := SetThreadRealtime(tid, 0); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := unix.Syscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0); int(p) != unix.SCHED_NORMAL {
		t.Errorf("policy %d, want SCHED_NORMAL", p)
	}
	if n, err := ThreadNice(tid); err != nil || n != 3 {
		t.Errorf("nice %d (%v) after realtime, want 3", n, err)
	}
}

// A process left under SCHED_RR, or at another nice value, runs normal
// again after ResetScheduling.
func TestResetScheduling(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_NICE)")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	if err := SetThreadRealtime(pid, 1); err != nil {
		t.Skipf("no realtime scheduling here: %v", err)
	}
	if err := ResetScheduling(pid); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := unix.Syscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(pid), 0, 0); int(p) != unix.SCHED_NORMAL {
		t.Errorf("policy %d after the reset, want SCHED_NORMAL", p)
	}
	SetThreadNice(pid, 7)
	if err := ResetScheduling(pid); err != nil {
		t.Fatal(err)
	}
	if n, err := ThreadNice(pid); err != nil || n != 0 {
		t.Errorf("nice %d (%v) after the reset, want 0", n, err)
	}
}

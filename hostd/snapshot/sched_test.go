package snapshot

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// With PointRealtime a point's boost runs the process's threads under
// SCHED_RR at nice snapshotNice, and its end puts them back as they were.
func TestBoostRealtime(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_NICE)")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	policy := func() int {
		p, _, _ := unix.Syscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(pid), 0, 0)
		return int(p) &^ 0x40000000 // SCHED_RESET_ON_FORK
	}
	defer func(was bool) { PointRealtime = was }(PointRealtime)
	for _, rt := range []bool{false, true} {
		PointRealtime = rt
		unboost := boost(pid, snapshotNice)
		nice, _ := qemu.ThreadNice(pid)
		want := unix.SCHED_NORMAL
		if rt {
			want = unix.SCHED_RR
		}
		if p := policy(); p != want || nice != snapshotNice {
			t.Errorf("realtime %v: boosted policy %d nice %d, want %d and %d", rt, p, nice, want, snapshotNice)
		}
		unboost()
		if nice, _ := qemu.ThreadNice(pid); policy() != unix.SCHED_NORMAL || nice != 0 {
			t.Errorf("realtime %v: after the boost policy %d nice %d, want SCHED_NORMAL and 0", rt, policy(), nice)
		}
	}
}

package snapshot

import (
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/sentinel"
)

// Snapshot points are serialized through a lock file shared by every hostd
// of a machine: a second taker waits for the first, and gives up when its
// context ends.
func TestLockMachineSerializes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snapshot.lock")
	release, err := lockMachine(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := lockMachine(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock while the first is held: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		r, err := lockMachine(context.Background(), path)
		if err == nil {
			r()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("took the lock while held: %v", err)
	case <-time.After(30 * time.Millisecond):
	}
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter never got the lock after its release")
	}
	if _, err := lockMachine(context.Background(), filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Fatal("a lock file that cannot be created gave a lock")
	}
}

// The reserved room covers what a stream of that much RAM can write.
func TestStreamBound(t *testing.T) {
	for _, mem := range []int64{256, 1024, 2048} {
		ram := mem << 20
		// Every 4 KiB page with its 8-byte header, plus device state.
		if need := ram + ram/4096*8 + 16<<20; bound(ram) < need {
			t.Errorf("%d MiB: bound %d < %d", mem, bound(ram), need)
		}
	}
}

// A boost renices every thread of the process and its end puts each back.
func TestBoost(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	nice := func() int {
		p, err := unix.Getpriority(unix.PRIO_PROCESS, pid)
		if err != nil {
			t.Fatal(err)
		}
		return 20 - p
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, pid, 3); err != nil {
		t.Fatal(err)
	}
	unboost := boost(pid, -7)
	if n := nice(); n != -7 {
		t.Fatalf("boosted: nice %d, want -7", n)
	}
	unboost()
	if n := nice(); n != 3 {
		t.Fatalf("after the boost: nice %d, want its own 3 back", n)
	}
	unix.Setpriority(unix.PRIO_PROCESS, pid, 5)
	unboost() // once only
	if n := nice(); n != 5 {
		t.Fatalf("a second unboost changed nice to %d", n)
	}
	boost(0, -7)() // no process: nothing to do

	// With PointRealtime a precopy's point also runs them under SCHED_RR.
	defer func(was bool) { PointRealtime = was }(PointRealtime)
	PointRealtime = true
	policy := func() int {
		p, _, _ := unix.Syscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(pid), 0, 0)
		return int(p) &^ 0x40000000 // SCHED_RESET_ON_FORK
	}
	unboost = boost(pid, -7)
	normal := realtime(pid, slog.Default())
	if p, n := policy(), nice(); p != unix.SCHED_RR || n != -7 {
		t.Fatalf("boosted in real time: policy %d nice %d, want SCHED_RR and -7", p, n)
	}
	normal()
	unboost()
	if p, n := policy(), nice(); p != unix.SCHED_NORMAL || n != 5 {
		t.Fatalf("after a real-time boost: policy %d nice %d, want SCHED_NORMAL and 5", p, n)
	}
	// A point that lasts goes back to normal by itself.
	defer func(was time.Duration) { pointRealtimeMax = was }(pointRealtimeMax)
	pointRealtimeMax = 20 * time.Millisecond
	normal = realtime(pid, slog.Default())
	for start := time.Now(); policy() != unix.SCHED_NORMAL; time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("still policy %d %v after the real-time bound of %v", policy(), time.Since(start), pointRealtimeMax)
		}
	}
	normal()
	PointRealtime = false
	realtime(pid, slog.Default())
	if p := policy(); p != unix.SCHED_NORMAL {
		t.Fatalf("PointRealtime off: policy %d, want SCHED_NORMAL", p)
	}
}

func TestConverge(t *testing.T) {
	for _, c := range []struct {
		passes int64
		want   time.Duration
	}{{0, precopyDowntime}, {precopyPasses, precopyDowntime}, {precopyPasses + 1, 2 * precopyDowntime},
		{precopyPasses + 3, 8 * precopyDowntime}, {precopyPasses + 9, 2 * time.Second}, {1 << 40, 2 * time.Second}} {
		if got := converge(c.passes); got != c.want {
			t.Errorf("converge(%d) = %s, want %s", c.passes, got, c.want)
		}
	}
}

// The state's verdict: a file other than the manifest's is a checksum
// error even when QEMU took it; QEMU's own error otherwise.
func TestStateVerdict(t *testing.T) {
	want := manifest.FileDigest{Size: 10, SHA256: "ab"}
	ok := fed{read: 10, sent: 10, sum: "ab"}
	if err := ok.verdict("s", want, nil); err != nil {
		t.Fatal(err)
	}
	qemu := errors.New("qemu failed")
	for name, c := range map[string]struct {
		f    fed
		qemu error
		want error
	}{
		"other bytes, qemu took them": {fed{read: 10, sent: 10, sum: "cd"}, nil, sentinel.ErrChecksum},
		"truncated, qemu failed":      {fed{read: 5, sent: 5, sum: "cd"}, qemu, sentinel.ErrChecksum},
		"right bytes, qemu failed":    {fed{read: 10, sent: 4, sum: "ab"}, qemu, qemu},
		"qemu stopped early":          {fed{read: 10, sent: 4, sum: "ab"}, nil, sentinel.ErrChecksum},
	} {
		if err := c.f.verdict("s", want, c.qemu); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

package qemu

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A thread's CPU time shows in its process's schedstat sum.
func TestThreadsSchedStat(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := func() time.Duration {
		var ts unix.Timespec
		unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
		return time.Duration(ts.Nano())
	}
	pid := os.Getpid()
	before, err := ThreadsSchedStat(pid, "")
	if err != nil {
		t.Fatal(err)
	}
	for start := cpu(); cpu()-start < 50*time.Millisecond; {
	}
	after, err := ThreadsSchedStat(pid, "")
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Sub(before); d.Run < 50*time.Millisecond || d.Wait < 0 {
		t.Fatalf("after this thread ran 50 ms the process's threads ran %v more, waited %v", d.Run, d.Wait)
	}
	if none, err := ThreadsSchedStat(pid, "no such thread"); err != nil || none != (SchedStat{}) {
		t.Fatalf("no thread named so: %+v, %v", none, err)
	}
}

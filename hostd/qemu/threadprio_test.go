package qemu

import (
	"os"
	"runtime"
	"slices"
	"testing"

	"unsafe"

	"golang.org/x/sys/unix"
)

// A thread named like QEMU's migration thread is found, goes idle and
// comes back; its nice value is changed and read back.
func TestMigrationThreadGoesIdleAndBack(t *testing.T) {
	got := make(chan error)
	found := make(chan []int)
	done := make(chan struct{})
	tidc := make(chan int, 1)
	go func() {
		runtime.LockOSThread() // the thread ends with the goroutine
		tidc <- unix.Gettid()
		name, _ := unix.BytePtrFromString("live_migration")
		got <- unix.Prctl(unix.PR_SET_NAME, uintptr(unsafePointer(name)), 0, 0, 0)
		<-done
	}()
	defer close(done)
	tid := <-tidc
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	go func() {
		tids, _ := MigrationThreads(os.Getpid())
		found <- tids
	}()
	if tids := <-found; !slices.Contains(tids, tid) {
		t.Fatalf("MigrationThreads = %v, want %d among them", tids, tid)
	}
	for _, nice := range []int{-5, 0} {
		if err := SetThreadNice(tid, nice); err != nil {
			t.Fatal(err)
		}
		if got, err := ThreadNice(tid); err != nil || got != nice {
			t.Fatalf("after SetThreadNice(%d): nice %d, %v", nice, got, err)
		}
	}
	for _, idle := range []bool{true, false} {
		if err := SetThreadIdle(tid, idle); err != nil {
			t.Fatal(err)
		}
		if is, err := ThreadIdle(tid); err != nil || is != idle {
			t.Fatalf("after SetThreadIdle(%v): idle %v, %v", idle, is, err)
		}
	}
}

func unsafePointer(p *byte) unsafe.Pointer { return unsafe.Pointer(p) }

// Boost renices every thread of a process and gives each its own value
// back.
func TestBoostRenicesEveryThreadAndBack(t *testing.T) {
	pid := os.Getpid()
	before, err := ThreadNice(pid)
	if err != nil {
		t.Fatal(err)
	}
	unboost := Boost(pid, before-3)
	tids, _ := Threads(pid)
	for _, tid := range tids {
		if n, err := ThreadNice(tid); err == nil && n != before-3 {
			t.Errorf("boosted thread %d: nice %d, want %d", tid, n, before-3)
		}
	}
	unboost()
	unboost()
	if n, _ := ThreadNice(pid); n != before {
		t.Errorf("after the boost: nice %d, want %d", n, before)
	}
}

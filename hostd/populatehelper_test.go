package hostd

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/lowest"
	"golang.org/x/sys/unix"
)

// TestPopulateLowestRunsInAHelper: a RAM file populated at the lowest
// priority is populated by another process (so its madvise holds that
// process's mmap lock, not this one's) running at nice 19, all of it,
// with no byte changed; a context that ends kills the helper.
func TestPopulateLowestRunsInAHelper(t *testing.T) {
	const size = 8*populateChunk + 4096
	f := sparseShmFile(t, size)
	mark := []byte("guest data")
	if _, err := f.WriteAt(mark, populateChunk+10); err != nil {
		t.Fatal(err)
	}
	var pid, nice int
	lowest.TestHookStarted = func(p int) {
		pid = p
		r, _, e := unix.Syscall(unix.SYS_GETPRIORITY, unix.PRIO_PROCESS, uintptr(p), 0)
		if e != 0 {
			t.Errorf("getpriority of the helper: %v", e)
		}
		nice = 20 - int(r)
	}
	defer func() { lowest.TestHookStarted = nil }()
	n, err := populateLowest(context.Background(), f, size)
	if err != nil {
		t.Fatal(err)
	}
	if pid == 0 || pid == os.Getpid() {
		t.Fatalf("populated by process %d, this is %d: want a helper", pid, os.Getpid())
	}
	if nice != 19 {
		t.Errorf("the helper ran at nice %d, want 19", nice)
	}
	if n != size || !allocated(f.Name(), size) {
		t.Fatalf("the helper populated %d of %d bytes; allocated: %v", n, size, allocated(f.Name(), size))
	}
	got := make([]byte, len(mark))
	if _, err := f.ReadAt(got, populateChunk+10); err != nil || !bytes.Equal(got, mark) {
		t.Fatalf("guest data reads %q after the populate, want %q (%v)", got, mark, err)
	}

	// A context that ends stops it: the helper is killed, not waited for.
	g := sparseShmFile(t, 1<<40) // far more than populates in the test's time
	ctx, cancel := context.WithCancel(context.Background())
	lowest.TestHookStarted = func(int) { time.AfterFunc(100*time.Millisecond, cancel) }
	done := make(chan error, 1)
	go func() { _, err := populateLowest(ctx, g, 1<<40); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a populate whose context ended returned no error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the helper runs on 30 s after its context ended")
	}
}

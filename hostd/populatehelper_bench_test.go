package hostd

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testguest"
	"golang.org/x/sys/unix"
)

// TestBenchPopulateStall is make bench's populate_lowest_mmap_stall line:
// while a 1 GiB RAM file on /dev/shm is populated at the lowest priority
// and busy loops (nice 0, two per core) stand for guests keeping the
// host's cores busy, this process maps and unmaps 256 KiB every
// millisecond, as Go's heap does, for 10 s: the longest such call and how
// many went through, with the populate on a thread of this process at
// nice 19 (the baseline) and in the helper, side by side in one run.
func TestBenchPopulateStall(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	const size, window = 1 << 30, 10 * time.Second
	line := map[string]any{"bench": "populate_lowest_mmap_stall", "file_mib": size >> 20, "window_seconds": window.Seconds()}
	for _, way := range []struct {
		name     string
		populate func(context.Context, *os.File, int64) (int64, error)
	}{{"in_process", populateOnLowestThread}, {"helper", populateLowest}} {
		worst, calls := populateStall(t, size, window, way.populate)
		line[way.name+"_worst_seconds"], line[way.name+"_calls"] = worst.Seconds(), calls
		t.Logf("%s: longest mmap+munmap %v, %d calls in %v", way.name, worst, calls, window)
	}
	benchline.Print(line)
}

// populateOnLowestThread is the baseline: the populate on a thread of this
// process at nice 19.
func populateOnLowestThread(ctx context.Context, f *os.File, size int64) (int64, error) {
	type result struct {
		n   int64
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // the thread dies with the goroutine
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		n, err := populateFile(ctx, f, size)
		ch <- result{n, err}
	}()
	r := <-ch
	return r.n, r.err
}

// populateStall populates a new file of size bytes by populate for at most
// window under busy loops and returns the longest mmap+munmap meanwhile
// and how many there were.
func populateStall(t *testing.T, size int64, window time.Duration, populate func(context.Context, *os.File, int64) (int64, error)) (time.Duration, int) {
	f := sparseShmFile(t, size)
	defer testguest.BusyLoops(t, 2)()
	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		populate(ctx, f, size)
	}()
	var worst time.Duration
	calls := 0
	for {
		select {
		case <-done:
			return worst, calls
		case <-time.After(time.Millisecond):
		}
		start := time.Now()
		m, err := unix.Mmap(-1, 0, 256<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
		if err != nil {
			t.Fatal(err)
		}
		m[0] = 1
		unix.Munmap(m)
		worst = max(worst, time.Since(start))
		calls++
	}
}

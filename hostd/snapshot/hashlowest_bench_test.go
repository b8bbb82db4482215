package snapshot

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchHashGCStall is make bench's lowest_hash_gc_stall line: while a
// 256 MiB state file is hashed over and over at the lowest priority and
// busy loops (nice 0, two per core) stand for guests keeping the host's
// cores busy, this process allocates 64 KiB every millisecond for 10 s,
// as hostd's steps do: the longest allocation and the longest garbage
// collector pause, with the hash on a thread of this process at nice 19
// (the baseline) and in the helper, side by side in one run.
func TestBenchHashGCStall(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	const window = 10 * time.Second
	path := fmt.Sprintf("/dev/shm/symvirt-hash-bench-%d", os.Getpid())
	if err := os.WriteFile(path, make([]byte, 256<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	line := map[string]any{"bench": "lowest_hash_gc_stall", "file_mib": 256, "window_seconds": window.Seconds()}
	for _, way := range []struct {
		name string
		hash func() error
	}{
		{"in_process", func() error {
			return atLowestPriority(func() error { _, err := manifest.HashFile(path); return err })
		}},
		{"helper", func() error { _, err := hashLowest(w); return err }},
	} {
		alloc, gc := gcStall(t, window, way.hash)
		line[way.name+"_worst_alloc_seconds"], line[way.name+"_worst_gc_pause_seconds"] = alloc.Seconds(), gc.Seconds()
		t.Logf("%s: longest allocation %v, longest GC pause %v", way.name, alloc, gc)
	}
	benchline.Print(line)
}

// gcStall runs hash over and over for window under busy loops and
// returns the longest 64 KiB allocation meanwhile and the longest GC pause.
func gcStall(t *testing.T, window time.Duration, hash func() error) (alloc, gc time.Duration) {
	defer testguest.BusyLoops(t, 2)()
	ctx, cancel := context.WithTimeout(context.Background(), window)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := hash(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	runtime.GC()
	var before debug.GCStats
	debug.ReadGCStats(&before)
	var keep [][]byte
	for ctx.Err() == nil {
		time.Sleep(time.Millisecond)
		start := time.Now()
		keep = append(keep, make([]byte, 64<<10))
		if len(keep) > 256 {
			keep = keep[:0]
		}
		alloc = max(alloc, time.Since(start))
	}
	var after debug.GCStats
	debug.ReadGCStats(&after) // the window's pauses, not the wait below
	<-done
	for i, p := range after.Pause {
		if int64(i) >= after.NumGC-before.NumGC {
			break
		}
		gc = max(gc, p)
	}
	return alloc, gc
}

package hostd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A RAM file populated beside a running VM, at the lowest priority, is
// populated by a helper process, not by a thread of hostd: the madvise
// holds the mmap lock of the process that calls it while it faults pages
// in, and a thread at nice 19 on a host whose cores the guests keep busy
// holds it for as long as it waits for a CPU. Every thread of that process
// that maps or unmaps memory (Go's heap growing and shrinking) waits behind
// it, so hostd's steps stalled for seconds at a time on a VM's first
// checkpoint after its start (make bench: populate_lowest_mmap_stall). The
// helper's own mmap lock stalls nobody else.
//
// The helper is hostd's own executable (any binary that links this
// package: the symvirt CLI, a test binary), run again with
// populateHelperEnv set to the file's size and the file as descriptor 3;
// it prints how many bytes it populated. It is started from a thread at
// nice 19, whose priority it and all its threads inherit.
const populateHelperEnv = "SYMVIRT_POPULATE_RAM_HELPER"

func init() {
	if v, ok := os.LookupEnv(populateHelperEnv); ok {
		os.Exit(populateHelperMain(v))
	}
}

// populateHelperMain is the helper: it populates descriptor 3's first
// size bytes and prints how many it did.
func populateHelperMain(size string) int {
	n, err := strconv.ParseInt(size, 10, 64)
	if err != nil || n <= 0 {
		fmt.Fprintf(os.Stderr, "%s=%q: want the file's size in bytes\n", populateHelperEnv, size)
		return 2
	}
	done, err := populateFile(context.Background(), os.NewFile(3, "guest RAM file"), n)
	fmt.Println(done)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// populateLowest populates size bytes of f in a helper process at the
// lowest priority; ctx's end kills it. It returns how many bytes the helper
// populated.
func populateLowest(ctx context.Context, f *os.File, size int64) (int64, error) {
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Env = []string{populateHelperEnv + "=" + strconv.FormatInt(size, 10)}
	cmd.ExtraFiles = []*os.File{f}
	var out, errOut cappedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := startLowest(cmd); err != nil {
		return 0, fmt.Errorf("populate helper: %w", err)
	}
	if testHookPopulateHelper != nil {
		testHookPopulateHelper(cmd.Process.Pid)
	}
	werr := cmd.Wait()
	n, _ := strconv.ParseInt(strings.TrimSpace(out.String()), 10, 64)
	switch {
	case ctx.Err() != nil:
		return n, ctx.Err()
	case werr != nil:
		return n, fmt.Errorf("populate helper: %w: %s", werr, strings.TrimSpace(errOut.String()))
	}
	return n, nil
}

// testHookPopulateHelper, when set (tests only), is told the helper's pid
// once it started.
var testHookPopulateHelper func(pid int)

// startLowest starts cmd from a thread at nice 19, so that the process
// and every thread it makes run there from their first instruction.
func startLowest(cmd *exec.Cmd) error {
	ch := make(chan error, 1)
	go func() {
		// The thread dies with this goroutine (locked, never unlocked):
		// no other goroutine runs on it at nice 19.
		runtime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19); err != nil {
			ch <- err
			return
		}
		ch <- cmd.Start()
	}()
	return <-ch
}

// cappedBuffer keeps the first 4 KiB written to it (a helper's output).
type cappedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.b = append(c.b, p[:min(len(p), max(0, 4096-len(c.b)))]...)
	return len(p), nil
}

func (c *cappedBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.b)
}

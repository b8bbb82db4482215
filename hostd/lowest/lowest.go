package lowest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	envTask = "SYMVIRT_LOWEST_TASK"
	envArg  = "SYMVIRT_LOWEST_ARG"
	// MaxOutput is how much of a helper's output, and of its error, is
	// kept.
	MaxOutput = 64 << 10
)

// Serve runs fn on descriptor 3 and exits, when this process is a helper
// started for task; otherwise it returns.
func Serve(task string, fn func(f *os.File, arg string) (string, error)) {
	if os.Getenv(envTask) != task {
		return
	}
	out, err := fn(os.NewFile(3, "file"), os.Getenv(envArg))
	fmt.Print(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestHookStarted, when set (tests only), is told each helper's pid once
// it started.
var TestHookStarted func(pid int)

// Run runs task on f with arg in a helper at nice 19 and returns what it
// printed; a helper that failed or was killed (ctx ended, or the thread
// that started it died with hostd) returns an error, beside what it
// printed before.
func Run(ctx context.Context, task string, f *os.File, arg string) (string, error) {
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Env = []string{envTask + "=" + task, envArg + "=" + arg}
	cmd.ExtraFiles = []*os.File{f}
	// Killed with the thread that started it: a helper outlives no hostd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errOut capped
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := runLowest(cmd)
	switch {
	case ctx.Err() != nil:
		return out.String(), ctx.Err()
	case err != nil:
		return out.String(), fmt.Errorf("%s helper: %w: %s", task, err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// runLowest starts cmd from a thread at nice 19, whose priority the
// process inherits, and waits for it there: the thread that started it
// lives until it ends (its death would send the helper its Pdeathsig).
func runLowest(cmd *exec.Cmd) error {
	ch := make(chan error, 1)
	go func() {
		// The thread dies with this goroutine (locked, never unlocked):
		// no other goroutine runs on it at nice 19.
		runtime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19); err != nil {
			ch <- err
			return
		}
		if err := cmd.Start(); err != nil {
			ch <- err
			return
		}
		if hook := TestHookStarted; hook != nil {
			hook(cmd.Process.Pid)
		}
		ch <- cmd.Wait()
	}()
	return <-ch
}

// capped keeps the first MaxOutput bytes written to it.
type capped struct {
	mu sync.Mutex
	b  []byte
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.b = append(c.b, p[:min(len(p), max(0, MaxOutput-len(c.b)))]...)
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.b)
}

package lowest

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	Serve("test-echo", func(f *os.File, arg string) (string, error) {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return "", err
		}
		nice, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
		if err != nil {
			return "", err
		}
		// Getpriority returns 20-nice (the raw syscall's value).
		return strings.Join([]string{arg, os.Getenv("HOME"), strconv.Itoa(int(st.Ino)), strconv.Itoa(20 - nice)}, " "), nil
	})
	Serve("test-fail", func(*os.File, string) (string, error) { return "half", os.ErrInvalid })
	Serve("test-sleep", func(*os.File, string) (string, error) { time.Sleep(time.Hour); return "", nil })
}

// TestRunInAHelperAtNice19: the task runs in another process at nice 19,
// on the caller's file as descriptor 3, with its argument and nothing of
// the caller's environment; its output comes back; a failure is an error
// with its text; a context that ends kills the helper.
func TestRunInAHelperAtNice19(t *testing.T) {
	t.Setenv("HOME", "/caller-home")
	f, err := os.CreateTemp(t.TempDir(), "f")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	pid := 0
	TestHookStarted = func(p int) { pid = p }
	defer func() { TestHookStarted = nil }()
	out, err := Run(context.Background(), "test-echo", f, "the-arg")
	if err != nil {
		t.Fatal(err)
	}
	if pid == 0 || pid == os.Getpid() {
		t.Fatalf("ran in process %d, this is %d: want a helper", pid, os.Getpid())
	}
	if want := "the-arg  " + strconv.Itoa(int(st.Ino)) + " 19"; out != want {
		t.Fatalf("helper printed %q, want %q (argument, no HOME, the file's inode, nice 19)", out, want)
	}
	out, err = Run(context.Background(), "test-fail", f, "")
	if err == nil || !strings.Contains(err.Error(), os.ErrInvalid.Error()) || out != "half" {
		t.Fatalf("a failed task: %q, %v; want its output and its error's text", out, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	TestHookStarted = func(int) { time.AfterFunc(100*time.Millisecond, cancel) }
	done := make(chan error, 1)
	go func() { _, err := Run(ctx, "test-sleep", f, ""); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a helper whose context ended returned no error")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the helper runs on 30 s after its context ended")
	}
}

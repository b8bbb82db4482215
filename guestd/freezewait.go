package guestd

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// frozenRecheck is how often waitFrozen re-reads cgroup.events without a
// change notice: a fallback, and how often it looks at ctx.
const frozenRecheck = 50 * time.Millisecond

// waitFrozen waits until cgroup.events in dir reports the cgroup frozen, for
// at most settle; an error only if ctx ends first. The kernel notifies a
// change of cgroup.events (inotify IN_MODIFY), so the wait ends as soon as
// the last task stops; recheck is the re-read interval if no notice comes
// (or inotify is not available).
func waitFrozen(ctx context.Context, dir string, settle, recheck time.Duration) (bool, error) {
	events := filepath.Join(dir, "cgroup.events")
	// Watched before the first read, so that no change falls in between.
	w := newChangeWatch(events)
	defer w.close()
	deadline := time.Now().Add(settle)
	for {
		ok, err := cgFrozen(dir)
		if err != nil {
			return false, err
		}
		if ok {
			return true, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, fmt.Errorf("waiting for the processes to freeze: %w", context.Cause(ctx))
		}
		w.wait(min(left, recheck))
	}
}

// changeWatch is an inotify watch for modifications of one file; fd -1:
// none (wait just sleeps).
type changeWatch struct{ fd int }

func newChangeWatch(path string) changeWatch {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return changeWatch{fd: -1}
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return changeWatch{fd: -1}
	}
	return changeWatch{fd: fd}
}

// wait returns when the file changed (since the last wait) or after d.
func (w changeWatch) wait(d time.Duration) {
	if w.fd < 0 {
		time.Sleep(d)
		return
	}
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	ms := max(1, int(d.Milliseconds()))
	if n, err := unix.Poll(fds, ms); err != nil || n == 0 {
		return
	}
	// Drain the events (their content does not matter): the next wait
	// must block until a new change.
	var buf [4096]byte
	for {
		if n, err := unix.Read(w.fd, buf[:]); n <= 0 || err != nil {
			return
		}
	}
}

func (w changeWatch) close() {
	if w.fd >= 0 {
		unix.Close(w.fd)
	}
}

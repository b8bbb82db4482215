// Package pausewatch measures how long a guest's vCPUs were paused, as
// the guest's output sees it, on the host's clock: the guest writes to its
// console every few milliseconds (TickScript) and a pause shows as the
// console file not growing. The guest's own clock cannot tell: under TCG
// it stops with the vCPUs.
package pausewatch

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// GapMonitor records the gaps in a file's growth: a guest that writes to
// its console every millisecond shows a pause of its vCPUs as a gap,
// measured on the host's clock (the guest's own clock stops with it).
type GapMonitor struct {
	stop chan struct{}
	done chan struct{}
	gaps []Gap // every one: At must find a pause shorter than a few ticks too
	max  time.Duration
}

// Gap is a time the file did not grow.
type Gap struct{ From, To time.Time }

// Len is the gap's length.
func (g Gap) Len() time.Duration { return g.To.Sub(g.From) }

// WatchGaps starts watching path. It waits on inotify for the file's
// writes, so that watching costs next to no CPU (on a small host the
// measurement would otherwise take CPU from the guests it measures); if
// inotify is not available it polls.
func WatchGaps(path string) *GapMonitor {
	m := &GapMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	last := time.Now()
	grew := func(now time.Time) {
		g := Gap{last, now}
		m.max = max(m.max, g.Len())
		m.gaps = append(m.gaps, g)
		last = now
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err == nil {
		if _, err = unix.InotifyAddWatch(fd, path, unix.IN_MODIFY); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		go m.poll(path, grew)
		return m
	}
	go func() {
		defer close(m.done)
		defer unix.Close(fd)
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.PathMax))
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			select {
			case <-m.stop:
				return
			default:
			}
			n, err := unix.Poll(pfd, 20)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return
			}
			if n <= 0 {
				continue
			}
			now := time.Now()
			if r, _ := unix.Read(fd, buf); r > 0 {
				grew(now)
			}
		}
	}()
	return m
}

func (m *GapMonitor) poll(path string, grew func(time.Time)) {
	defer close(m.done)
	var size int64
	for {
		select {
		case <-m.stop:
			return
		case <-time.After(250 * time.Microsecond):
		}
		if st, err := os.Stat(path); err == nil && st.Size() != size {
			size = st.Size()
			grew(time.Now())
		}
	}
}

// End stops watching and returns the longest gap.
func (m *GapMonitor) End() time.Duration {
	close(m.stop)
	<-m.done
	return m.max
}

// Longest returns the n longest gaps (after End), longest first.
func (m *GapMonitor) Longest(n int) []Gap {
	g := slices.Clone(m.gaps)
	slices.SortFunc(g, func(a, b Gap) int { return cmp.Compare(b.Len(), a.Len()) })
	return g[:min(n, len(g))]
}

// At returns the length of the gap around instant t (after End), the
// guest-visible pause at a known event: GapAt's, 0 for a t outside the
// watch.
func (m *GapMonitor) At(t time.Time) time.Duration {
	g, _ := m.GapAt(t)
	return g.Len()
}

// GapAt returns the gap around instant t (after End): the time between the
// file's last growth before t and its first after, however short; of the
// gaps within a millisecond of t (the clocks of two processes, polling),
// the longest. ok is false for a t outside the watch.
func (m *GapMonitor) GapAt(t time.Time) (g Gap, ok bool) {
	const slack = time.Millisecond
	for _, c := range m.gaps {
		if !t.Before(c.From.Add(-slack)) && !t.After(c.To.Add(slack)) && (!ok || c.Len() > g.Len()) {
			g, ok = c, true
		}
	}
	return g, ok
}

// TickScript runs the guest-side timestamp loop (examples/tick, installed
// as /bin/tick: TickBinary) on the guest's console: a line every
// millisecond (every $SYMVIRT_TICKPERIOD microseconds: symvirt.tickperiod
// on the kernel command line), so a gap longer than a few periods is a
// pause.
const TickScript = `#!/bin/sh
/bin/tick ${SYMVIRT_TICKPERIOD:-1000} </dev/null >/dev/console 2>&1 &
`

var (
	tickOnce sync.Once
	tickPath string
	tickErr  error
)

// TickBinary builds examples/tick (static, for the libc-less test guest)
// and returns its path.
func TickBinary(t testing.TB) string {
	tickOnce.Do(func() {
		dir, err := os.Getwd()
		for err == nil {
			if _, serr := os.Stat(filepath.Join(dir, "go.mod")); serr == nil {
				break
			}
			if filepath.Dir(dir) == dir {
				err = errors.New("no go.mod above the working directory")
				break
			}
			dir = filepath.Dir(dir)
		}
		if err != nil {
			tickErr = err
			return
		}
		src := filepath.Join(dir, "examples", "tick")
		if out, err := exec.Command("make", "-s", "-C", src).CombinedOutput(); err != nil {
			tickErr = fmt.Errorf("make -C %s: %v: %s", src, err, out)
			return
		}
		tickPath = filepath.Join(src, "tick")
	})
	if tickErr != nil {
		t.Fatal(tickErr)
	}
	return tickPath
}

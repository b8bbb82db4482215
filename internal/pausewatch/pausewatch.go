// Package pausewatch measures how long a guest's vCPUs were paused, as
// the guest's output sees it, on the host's clock: the guest writes to its
// console every few milliseconds (TickScript) and a pause shows as the
// console file not growing. The guest's own clock cannot tell: under TCG
// it stops with the vCPUs.
package pausewatch

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// GapMonitor records the longest time a file did not grow: a guest that
// writes to its console every few milliseconds shows a pause of its vCPUs
// as a gap, measured on the host's clock (the guest's own clock stops
// with it).
type GapMonitor struct {
	stop chan struct{}
	done chan time.Duration
}

// WatchGaps starts watching path.
func WatchGaps(path string) *GapMonitor {
	m := &GapMonitor{stop: make(chan struct{}), done: make(chan time.Duration, 1)}
	go func() {
		var size int64
		last, maxGap := time.Now(), time.Duration(0)
		for {
			select {
			case <-m.stop:
				m.done <- maxGap
				return
			case <-time.After(500 * time.Microsecond):
			}
			st, err := os.Stat(path)
			if err != nil {
				continue
			}
			if now := time.Now(); st.Size() != size {
				size = st.Size()
				maxGap = max(maxGap, now.Sub(last))
				last = now
			}
		}
	}()
	return m
}

// End stops watching and returns the longest gap.
func (m *GapMonitor) End() time.Duration { close(m.stop); return <-m.done }

// TickScript runs the guest-side timestamp loop (examples/tick, installed
// as /bin/tick: TickBinary) on the guest's console: a line every
// millisecond, so a gap longer than a few milliseconds is a pause.
const TickScript = `#!/bin/sh
/bin/tick 1000 </dev/null >/dev/console 2>&1 &
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

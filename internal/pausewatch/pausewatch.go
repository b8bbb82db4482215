// Package pausewatch measures how long a guest's vCPUs were paused, as
// the guest's output sees it, on the host's clock: the guest writes to its
// console every few milliseconds (TickScript) and a pause shows as the
// console file not growing. The guest's own clock cannot tell: under TCG
// it stops with the vCPUs.
package pausewatch

import (
	"os"
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

// TickScript makes a guest write to its console every 5 ms (for
// WatchGaps).
const TickScript = `#!/bin/sh
( while :; do echo .; usleep 5000; done ) </dev/null >/dev/console 2>&1 &
`

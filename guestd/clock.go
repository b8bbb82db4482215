package guestd

import (
	"log/slog"
	"time"

	"golang.org/x/sys/unix"
)

// clockStepMin is the smallest difference with the host's clock that a
// RESUME corrects: below it the guest's clock is left alone (a live
// checkpoint pauses the VM for milliseconds; the message itself takes a
// few to arrive).
const clockStepMin = 250 * time.Millisecond

// stepClock sets the guest's wall clock to the host's (RESUME's
// host_time_ns) when they differ by clockStepMin or more: a VM restored
// from a checkpoint, migrated or stopped to be saved comes back with its
// clock where it stopped. guestproto has already checked the time's range.
// CLOCK_MONOTONIC and the kernel's timers are not touched; applications
// that measure with CLOCK_REALTIME see the time the VM was away.
func (a *agent) stepClock(log *slog.Logger, host time.Time) {
	if host.IsZero() {
		return
	}
	off := host.Sub(time.Now())
	if off.Abs() < clockStepMin {
		return
	}
	set := a.cfg.setClock
	if set == nil {
		set = setRealtime
	}
	if err := set(host); err != nil {
		log.Warn("cannot step the clock to the host's", "offset", off.Round(time.Millisecond), "err", err)
		return
	}
	log.Info("clock stepped to the host's", "offset", off.Round(time.Millisecond))
}

func setRealtime(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

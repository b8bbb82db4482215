package snapshot

import (
	"context"
	"fmt"
	"time"
)

// Background takes the snapshot point of a background snapshot (see
// stream.go) into the armed file and returns once QEMU runs the VM again,
// while its memory as it was then streams on. A stopped VM is run by QEMU
// at its point. On error the arm is disarmed.
func Background(ctx context.Context, a *Armed, o Options) (*Stream, error) {
	mon := a.mon
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": true}); err != nil {
		a.Disarm()
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	unlock, err := serializePoints(ctx, o.Log)
	if err != nil {
		a.Disarm()
		return nil, err
	}
	s, sctx := newStream(a, o)
	events, unsubscribe := mon.Subscribe("STOP", "RESUME", "MIGRATION")
	defer unsubscribe()
	// From migrate to a little after the point the VM goes first on a busy
	// host: the stream's set-up holds QEMU's big lock (stalling the guest's
	// I/O), the point needs the main loop and the vCPUs to answer, and a
	// guest that waits for a CPU after it is as stalled as a paused one.
	// The stream's thread, born of the boosted main loop, shares the boost.
	unboost := boost(o.PID, snapshotNice)
	endBoost := func() { unboost(); unlock() }
	if err := mon.Migrate(ctx, "fd:"+FD); err != nil {
		endBoost()
		a.Disarm()
		return nil, err
	}
	a.used = true
	go s.follow(sctx, nil, func(err error) error { return err })
	err = s.await(ctx, events, func(ev string, at time.Time) bool {
		switch ev {
		case "STOP":
			s.Stopped = at
		case "RESUME":
			s.At = at
			return true
		case "completed":
			return true
		}
		return false
	})
	switch {
	case err != nil:
		endBoost()
		return nil, err
	case s.At.IsZero(): // a tiny VM: complete already
		endBoost()
	default:
		time.AfterFunc(catchUp, endBoost)
	}
	return s, nil
}

package snapshot

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// A job's precopies start together and, the same size and sharing the
// cores alike, end together: four VMs on two cores were stopped for their
// points within 4 ms of each other, each then paused two to three times
// as long as one alone (14-16 ms against 5-8 ms spread 50 ms apart), as
// their last pages and devices went out at once. Starting the copies a
// little apart on a machine keeps their ends apart.
const (
	// precopyStagger is the time between two precopy starts on a
	// machine; SYMVIRT_PRECOPY_STAGGER (a duration, 0 for none)
	// overrides it.
	precopyStagger = 20 * time.Millisecond
)

// staggerLockPath orders precopy starts across a machine's hostds.
var staggerLockPath = "/run/symvirt-precopy.lock"

var stagger = envDuration("SYMVIRT_PRECOPY_STAGGER", precopyStagger)

func envDuration(name string, def time.Duration) time.Duration {
	d, err := time.ParseDuration(os.Getenv(name))
	if err != nil || d < 0 {
		return def
	}
	return d
}

// staggerStart waits for the machine's last precopy start to be stagger
// old and returns the function to call once this copy has started.
func staggerStart(ctx context.Context, log *slog.Logger) (started func(), err error) {
	if stagger == 0 {
		return func() {}, nil
	}
	unlock, err := lockMachine(ctx, staggerLockPath)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// An optimization, not a condition.
		log.Warn("precopy starts not staggered on this machine", "err", err)
		return func() {}, nil
	}
	return func() { time.AfterFunc(stagger, unlock) }, nil
}

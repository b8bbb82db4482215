package coord

import (
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

var stopOnce sync.Once

// stopPoint pauses the process (SIGSTOP to itself) the first time an
// operation has journaled the configured phase, before its actions go out:
// a test then lets the session run out and wakes it (SIGCONT) to see that
// what it sends is refused.
func (c *Coord) stopPoint(op *machine.Op) {
	if c.cfg.StopAt == "" || string(op.Phase) != c.cfg.StopAt {
		return
	}
	stopOnce.Do(func() {
		c.log.Warn("stop point reached: pausing the process", "phase", op.Phase, "epoch", c.epoch())
		syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		// The stop reaches every thread asynchronously: nothing may go
		// out before it has (a stopped process's timer runs out while
		// it is stopped, so this adds nothing after SIGCONT).
		time.Sleep(time.Second)
		c.log.Warn("woken after the stop point", "phase", op.Phase, "epoch", c.epoch())
	})
}

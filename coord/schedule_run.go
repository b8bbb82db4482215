package coord

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// schedTick is how often the scheduler looks for due schedules (it bounds
// how late a tick can start).
const schedTick = 500 * time.Millisecond

// scheduler runs the stored schedules on the coordinator's clock.
type scheduler struct {
	mu      sync.Mutex // serialises read-modify-write of schedule records
	stop    chan struct{}
	done    chan struct{}
	running sync.WaitGroup // ticks under way (tests wait for them)
}

// startScheduler starts the loop; stopScheduler (Close) ends it. A
// checkpoint a tick started is not waited for: it is journaled like any
// other, so a restarted coordinator finishes or rolls it back.
func (c *Coord) startScheduler() {
	c.sched.stop, c.sched.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(c.sched.done)
		t := time.NewTicker(schedTick)
		defer t.Stop()
		for {
			select {
			case <-c.sched.stop:
				return
			case now := <-t.C:
				c.tickSchedules(now)
			}
		}
	}()
}

func (c *Coord) stopScheduler() {
	if c.sched.stop != nil {
		close(c.sched.stop)
		<-c.sched.done
	}
}

// tickSchedules starts the checkpoint of every due schedule. The tick is
// marked taken first, so the next one is due a period later whatever this
// one's outcome (a restarted coordinator runs an overdue one once).
func (c *Coord) tickSchedules(now time.Time) {
	scheds, err := c.Schedules()
	if err != nil {
		c.log.Error("schedules not readable: no scheduled checkpoint starts", "err", err)
		return
	}
	for _, s := range scheds {
		if now.Before(s.Next()) {
			continue
		}
		if err := c.updateSchedule(s.Job, s.Created, func(x *Schedule) { x.LastRun = now.UTC() }); err != nil {
			c.log.Error("schedule not updated: its tick is not taken", "job", s.Job, "err", err)
			continue
		}
		c.sched.running.Add(1)
		go func() {
			defer c.sched.running.Done()
			c.runTick(s)
		}()
	}
}

// runTick checkpoints the job through the same path as `symvirt
// checkpoint`; a job busy with another operation skips the tick. After a
// complete checkpoint the job's oldest complete ones beyond Keep go.
func (c *Coord) runTick(s Schedule) {
	log := c.log.With("job", s.Job, "every", s.Every, "keep", s.Keep)
	res, err := c.Checkpoint(context.Background(), s.Job, s.Options, nil)
	switch {
	case errors.Is(err, ErrBusy):
		log.Warn("scheduled checkpoint skipped: the job is busy", "err", err)
		c.scheduleOutcome(s, log, func(x *Schedule) { x.Skipped++; x.LastOutcome = "skipped: " + err.Error() })
		return
	case errors.Is(err, ErrNotFound) && res.Op == "":
		if _, jerr := c.Job(s.Job); errors.Is(jerr, ErrNotFound) {
			log.Warn("schedule dropped: its job is gone")
			c.dropSchedule(s, log)
			return
		}
		fallthrough
	case err != nil || res.Checkpoint != machine.CheckpointComplete:
		why := res.Reason
		if err != nil {
			why = err.Error()
		}
		log.Error("scheduled checkpoint failed", "checkpoint", res.CheckpointID, "err", why)
		c.scheduleOutcome(s, log, func(x *Schedule) {
			x.Runs, x.Failed = x.Runs+1, x.Failed+1
			x.LastOutcome = "failed: " + why
		})
		return
	}
	log.Info("scheduled checkpoint complete", "checkpoint", res.CheckpointID)
	pruned := c.prune(s.Job, s.Keep, log)
	c.scheduleOutcome(s, log, func(x *Schedule) {
		x.Runs, x.Pruned = x.Runs+1, x.Pruned+pruned
		x.LastOutcome = "complete: " + res.CheckpointID
	})
}

// dropSchedule removes a schedule unless it was replaced meanwhile.
func (c *Coord) dropSchedule(s Schedule, log *slog.Logger) {
	c.sched.mu.Lock()
	defer c.sched.mu.Unlock()
	var cur Schedule
	if err := c.store.Get(bucketSchedules, s.Job, &cur); err != nil || !cur.Created.Equal(s.Created) {
		return
	}
	if err := c.store.Delete(bucketSchedules, s.Job); err != nil {
		log.Error("schedule not dropped", "err", err)
	}
}

func (c *Coord) scheduleOutcome(s Schedule, log *slog.Logger, change func(*Schedule)) {
	if err := c.updateSchedule(s.Job, s.Created, change); err != nil {
		log.Error("schedule not updated: its counters miss this tick", "err", err)
	}
}

// prune deletes the job's complete checkpoints beyond its keep newest,
// through the checkpoint delete path. It holds the job meanwhile (an
// operation restoring from one of them would lose its files); a busy job
// is pruned after its next scheduled checkpoint.
func (c *Coord) prune(job string, keep int, log *slog.Logger) int {
	if err := c.claim(job, "retention"); err != nil {
		log.Warn("retention skipped: the job is busy", "err", err)
		return 0
	}
	defer c.release(job)
	cks, err := c.Checkpoints()
	if err != nil {
		log.Error("retention skipped: checkpoints not readable", "err", err)
		return 0
	}
	n := 0
	for _, ck := range expired(cks, job, keep) {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.StepTimeout+time.Minute)
		err := c.RemoveCheckpoint(ctx, ck.ID)
		cancel()
		if err != nil {
			log.Error("retention: checkpoint not deleted", "checkpoint", ck.ID, "err", err)
			continue
		}
		log.Info("retention: checkpoint deleted", "checkpoint", ck.ID, "created", ck.CreatedAt)
		n++
	}
	return n
}

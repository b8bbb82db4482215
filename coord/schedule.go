package coord

import (
	"errors"
	"fmt"
	"time"
)

// Schedule makes the coordinator checkpoint a job every Every and keep its
// Keep newest complete checkpoints. It lives in the store, so a restarted
// coordinator goes on with it.
type Schedule struct {
	Job     string            `json:"job"`
	Every   time.Duration     `json:"every_ns"`
	Keep    int               `json:"keep"`
	Options CheckpointOptions `json:"options"`
	Created time.Time         `json:"created"`
	// LastRun is when the last tick was due and taken (run or skipped).
	LastRun time.Time `json:"last_run,omitzero"`
	// LastOutcome: "complete", "failed: WHY" or "skipped: WHY".
	LastOutcome string `json:"last_outcome,omitempty"`
	Runs        int    `json:"runs"`    // checkpoints started by the schedule
	Skipped     int    `json:"skipped"` // ticks skipped: the job was busy
	Failed      int    `json:"failed"`  // checkpoints that did not complete
	Pruned      int    `json:"pruned"`  // checkpoints deleted for retention
}

// MinEvery is the shortest schedule period: below it a checkpoint of any
// real job would not end before the next one is due.
const MinEvery = time.Second

// Next is when the schedule's next tick is due: one period after the last
// (or after its creation).
func (s Schedule) Next() time.Time {
	last := s.LastRun
	if last.IsZero() {
		last = s.Created
	}
	return last.Add(s.Every)
}

func (s Schedule) validate() error {
	switch {
	case s.Every < MinEvery:
		return fmt.Errorf("schedule of job %q: every %s: want at least %s: %w", s.Job, s.Every, MinEvery, ErrInvalid)
	case s.Keep < 1:
		return fmt.Errorf("schedule of job %q: keep %d: want at least 1 (the only complete checkpoint is never deleted): %w",
			s.Job, s.Keep, ErrInvalid)
	}
	if err := validFence("options.network_fence", s.Options.NetworkFence); err != nil {
		return fmt.Errorf("schedule of job %q: %w", s.Job, err)
	}
	return nil
}

// SetSchedule creates or replaces a job's schedule; its first tick is one
// period from now.
func (c *Coord) SetSchedule(s Schedule) (Schedule, error) {
	if _, err := c.Job(s.Job); err != nil {
		return s, err
	}
	if err := s.validate(); err != nil {
		return s, err
	}
	s.Created = time.Now().UTC()
	s.LastRun, s.LastOutcome, s.Runs, s.Skipped, s.Failed, s.Pruned = time.Time{}, "", 0, 0, 0, 0
	c.sched.mu.Lock()
	defer c.sched.mu.Unlock()
	return s, c.store.Put(bucketSchedules, s.Job, s)
}

// Schedules lists the schedules by job.
func (c *Coord) Schedules() ([]Schedule, error) { return listAll[Schedule](c.store, bucketSchedules) }

// RemoveSchedule stops a job's schedule (a checkpoint it started runs on).
func (c *Coord) RemoveSchedule(job string) (Schedule, error) {
	c.sched.mu.Lock()
	defer c.sched.mu.Unlock()
	var s Schedule
	if err := c.store.Get(bucketSchedules, job, &s); err != nil {
		return s, fmt.Errorf("schedule of job %q: %w", job, err)
	}
	return s, c.store.Delete(bucketSchedules, job)
}

// updateSchedule changes a stored schedule in place; one removed (or
// replaced: another Created) meanwhile is left as it is.
func (c *Coord) updateSchedule(job string, created time.Time, change func(*Schedule)) error {
	c.sched.mu.Lock()
	defer c.sched.mu.Unlock()
	var s Schedule
	if err := c.store.Get(bucketSchedules, job, &s); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	if !s.Created.Equal(created) {
		return nil
	}
	change(&s)
	return c.store.Put(bucketSchedules, job, s)
}

// expired returns the job's complete checkpoints beyond its keep newest
// (cks newest first, as Checkpoints lists them), oldest last. Failed and
// in-progress ones are neither counted nor returned; with keep >= 1 the
// newest complete one is never among them.
func expired(cks []Checkpoint, job string, keep int) []Checkpoint {
	if keep < 1 {
		keep = 1
	}
	var out []Checkpoint
	n := 0
	for _, ck := range cks {
		if ck.Job != job || ck.Status != "complete" {
			continue
		}
		n++
		if n > keep {
			out = append(out, ck)
		}
	}
	return out
}

// lastComplete returns each job's newest complete checkpoint (cks newest
// first).
func lastComplete(cks []Checkpoint) map[string]Checkpoint {
	out := map[string]Checkpoint{}
	for _, ck := range cks {
		if _, ok := out[ck.Job]; !ok && ck.Status == "complete" {
			out[ck.Job] = ck
		}
	}
	return out
}

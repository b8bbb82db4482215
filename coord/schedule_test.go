package coord

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// Retention counts and deletes only the job's complete checkpoints: failed
// and in-progress ones are never counted as kept, other jobs' never touched,
// and the newest complete one always stays.
func TestExpiredKeepsNewestComplete(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ck := func(id, job, status string, min int) Checkpoint {
		return Checkpoint{ID: id, Job: job, Status: status, CreatedAt: t0.Add(time.Duration(min) * time.Minute)}
	}
	// Newest first, as Checkpoints lists them.
	cks := []Checkpoint{
		ck("c7", "j1", "in-progress", 7), ck("c6", "j1", "failed", 6), ck("c5", "j1", "complete", 5),
		ck("o4", "j2", "complete", 4), ck("c3", "j1", "complete", 3), ck("c2", "j1", "failed", 2),
		ck("c1", "j1", "complete", 1), ck("c0", "j1", "complete", 0),
	}
	ids := func(cks []Checkpoint) []string {
		var out []string
		for _, c := range cks {
			out = append(out, c.ID)
		}
		return out
	}
	for _, tc := range []struct {
		keep int
		want []string
	}{{3, []string{"c0"}}, {2, []string{"c1", "c0"}}, {1, []string{"c3", "c1", "c0"}}, {0, []string{"c3", "c1", "c0"}}, {4, nil}} {
		if got := ids(expired(cks, "j1", tc.keep)); !slices.Equal(got, tc.want) {
			t.Errorf("keep %d: expired %v, want %v", tc.keep, got, tc.want)
		}
	}
	if got := ids(expired([]Checkpoint{ck("c6", "j1", "failed", 6), ck("c5", "j1", "complete", 5)}, "j1", 1)); got != nil {
		t.Errorf("the only complete checkpoint expired: %v", got)
	}
	last := lastComplete(cks)
	if last["j1"].ID != "c5" || last["j2"].ID != "o4" || len(last) != 2 {
		t.Errorf("lastComplete: %v", last)
	}
}

// A schedule is due one period after its last tick, or after its creation;
// a period under MinEvery or a keep under 1 is refused as invalid.
func TestScheduleNextAndValidate(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := Schedule{Job: "j1", Every: time.Hour, Keep: 3, Created: t0}
	if s.Next() != t0.Add(time.Hour) {
		t.Errorf("first tick at %s", s.Next())
	}
	s.LastRun = t0.Add(90 * time.Minute)
	if s.Next() != t0.Add(150*time.Minute) {
		t.Errorf("next tick at %s", s.Next())
	}
	if err := s.validate(); err != nil {
		t.Errorf("valid schedule: %v", err)
	}
	for _, bad := range []Schedule{{Job: "j1", Every: 500 * time.Millisecond, Keep: 1}, {Job: "j1", Every: time.Hour}} {
		if err := bad.validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
}

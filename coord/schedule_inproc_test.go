package coord

import (
	"bytes"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A schedule's tick that finds its job busy is skipped, in the log and in
// the metrics; once the job is free the ticks checkpoint it through the
// checkpoint path and keep exactly Keep complete checkpoints of the job,
// deleted through the hostd that wrote them, leaving a failed checkpoint
// and another job's alone.
func TestScheduleSkipsBusyJobAndKeepsN(t *testing.T) {
	fake := &fakeHostd{}
	srv := httptest.NewServer(fake.handler())
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Put(bucketHosts, "h1", Host{Name: "h1", Addr: strings.TrimPrefix(srv.URL, "http://")})
	st.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}}})
	old := time.Now().Add(-time.Hour)
	st.Put(bucketCheckpoints, "j1-failed", Checkpoint{ID: "j1-failed", Job: "j1", Status: "failed", CreatedAt: old})
	st.Put(bucketCheckpoints, "j2-old", Checkpoint{ID: "j2-old", Job: "j2", Status: "complete", CreatedAt: old})
	st.Close()
	var logs syncBuffer
	c, err := New(Config{StateDir: dir, CheckpointDir: "/ck", Lease: 3 * time.Second, StepTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	if err := c.claim("j1", "op-other"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetSchedule(Schedule{Job: "j1", Every: time.Second, Keep: 2}); err != nil {
		t.Fatal(err)
	}
	s := waitSchedule(t, c, func(s Schedule) bool { return s.Skipped >= 1 })
	if s.Runs != 0 || !strings.Contains(s.LastOutcome, "skipped: ") {
		t.Errorf("a tick on a busy job: %+v", s)
	}
	if !strings.Contains(logs.String(), `"msg":"scheduled checkpoint skipped: the job is busy"`) {
		t.Errorf("no skip in the log:\n%s", logs.String())
	}
	if m := scrapeMetrics(t, c); !strings.Contains(m, `symvirt_coord_schedule_ticks_total{job="j1",result="skipped"} `) {
		t.Errorf("no skipped ticks in the metrics:\n%s", m)
	}

	c.release("j1")
	waitSchedule(t, c, func(s Schedule) bool { return s.Runs-s.Failed >= 4 && s.Pruned >= 2 })
	if _, err := c.RemoveSchedule("j1"); err != nil {
		t.Fatal(err)
	}
	c.sched.running.Wait()
	cks, _ := c.Checkpoints()
	var complete []string
	for _, ck := range cks {
		if ck.Job == "j1" && ck.Status == "complete" {
			complete = append(complete, ck.ID)
		}
	}
	if len(complete) != 2 {
		t.Errorf("complete checkpoints of j1: %v, want 2", complete)
	}
	for _, id := range []string{"j1-failed", "j2-old"} {
		if _, err := c.CheckpointByID(id); err != nil {
			t.Errorf("retention deleted %s: %v", id, err)
		}
	}
	fake.mu.Lock()
	steps := strings.Join(fake.steps, " ")
	fake.mu.Unlock()
	if !strings.Contains(steps, "delete-artifacts/vm1") {
		t.Errorf("no checkpoint deleted through its hostd: %s", steps)
	}
	m := scrapeMetrics(t, c)
	if !strings.Contains(m, `symvirt_coord_job_last_checkpoint_age_seconds{job="j1"} `) ||
		!strings.Contains(m, `symvirt_coord_job_last_checkpoint_age_seconds{job="j2"} `) {
		t.Errorf("no checkpoint age per job in the metrics:\n%s", m)
	}
}

func waitSchedule(t *testing.T, c *Coord, done func(Schedule) bool) Schedule {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		scheds, err := c.Schedules()
		if err != nil || len(scheds) != 1 {
			t.Fatalf("schedules: %v %+v", err, scheds)
		}
		if done(scheds[0]) {
			return scheds[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("schedule did not get there: %+v", scheds[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func scrapeMetrics(t *testing.T, c *Coord) string {
	srv := httptest.NewServer(c.MetricsHandler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The schedule of a job that was removed is dropped at its next tick.
func TestScheduleOfRemovedJobIsDropped(t *testing.T) {
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}}})
	st.Close()
	c, err := New(Config{StateDir: dir, CheckpointDir: "/ck", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.SetSchedule(Schedule{Job: "j1", Every: time.Second, Keep: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RemoveJob("j1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		scheds, _ := c.Schedules()
		if len(scheds) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the schedule of a removed job stays: %+v", scheds)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

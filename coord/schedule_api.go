package coord

import (
	"github.com/symvirt/symvirt/hostd"
	"net/http"
	"time"
)

// scheduleRoutes: periodic checkpoints of a job, with retention.
func (c *Coord) scheduleRoutes(mux *http.ServeMux) {
	handle(mux, "GET /v1/schedules", func(*http.Request, none) (any, error) { return c.Schedules() })
	handle(mux, "PUT /v1/schedules/{job}", func(r *http.Request, s Schedule) (any, error) {
		s.Job = r.PathValue("job")
		return c.SetSchedule(s)
	})
	handle(mux, "DELETE /v1/schedules/{job}", func(r *http.Request, _ none) (any, error) {
		return c.RemoveSchedule(r.PathValue("job"))
	})
}

// JobInfo is a job as `symvirt jobs` lists it: with its newest complete
// checkpoint and that checkpoint's age on the coordinator's clock.
type JobInfo struct {
	Job
	LastCheckpoint *LastCheckpoint `json:"last_checkpoint,omitempty"`
	// Usage is each running VM's usage, by VM name (consolidate_usage.go).
	Usage map[string]*hostd.VMUsage `json:"usage,omitempty"`
}

// LastCheckpoint is a job's newest complete checkpoint.
type LastCheckpoint struct {
	ID         string    `json:"id"`
	CreatedAt  time.Time `json:"created_at"`
	AgeSeconds float64   `json:"age_seconds"`
}

// JobInfos lists the jobs with their newest complete checkpoint.
func (c *Coord) JobInfos() ([]JobInfo, error) {
	jobs, err := c.Jobs()
	if err != nil {
		return nil, err
	}
	cks, err := c.Checkpoints()
	if err != nil {
		return nil, err
	}
	last, now := lastComplete(cks), time.Now()
	out := make([]JobInfo, 0, len(jobs))
	for _, j := range jobs {
		ji := JobInfo{Job: j}
		if ck, ok := last[j.Name]; ok {
			ji.LastCheckpoint = &LastCheckpoint{ID: ck.ID, CreatedAt: ck.CreatedAt, AgeSeconds: now.Sub(ck.CreatedAt).Seconds()}
		}
		out = append(out, ji)
	}
	return out, nil
}

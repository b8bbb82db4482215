package coord

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descCkAge = prometheus.NewDesc("symvirt_coord_job_last_checkpoint_age_seconds",
		"Age of each job's newest complete checkpoint on the coordinator's clock (no series: none yet).", []string{"job"}, nil)
	descSchedEvery = prometheus.NewDesc("symvirt_coord_schedule_period_seconds",
		"Period of each job's checkpoint schedule.", []string{"job"}, nil)
	descSchedTicks = prometheus.NewDesc("symvirt_coord_schedule_ticks_total",
		"Ticks of each job's schedule by result: complete, failed, or skipped (the job was busy).",
		[]string{"job", "result"}, nil)
	descSchedPruned = prometheus.NewDesc("symvirt_coord_schedule_pruned_checkpoints_total",
		"Complete checkpoints a job's schedule deleted for retention.", []string{"job"}, nil)
)

// scheduleCollector reports checkpoint ages and schedules from the store at
// scrape time (the counters are the schedule's own, so they survive a
// restart of the coordinator).
type scheduleCollector struct{ c *Coord }

func (s scheduleCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCkAge, descSchedEvery, descSchedTicks, descSchedPruned} {
		ch <- d
	}
}

func (s scheduleCollector) Collect(ch chan<- prometheus.Metric) {
	metric := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	if cks, err := s.c.Checkpoints(); err != nil {
		ch <- prometheus.NewInvalidMetric(descCkAge, err)
	} else {
		now := time.Now()
		for job, ck := range lastComplete(cks) {
			metric(descCkAge, prometheus.GaugeValue, now.Sub(ck.CreatedAt).Seconds(), job)
		}
	}
	scheds, err := s.c.Schedules()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descSchedTicks, err)
		return
	}
	for _, sc := range scheds {
		metric(descSchedEvery, prometheus.GaugeValue, sc.Every.Seconds(), sc.Job)
		metric(descSchedTicks, prometheus.CounterValue, float64(sc.Runs-sc.Failed), sc.Job, "complete")
		metric(descSchedTicks, prometheus.CounterValue, float64(sc.Failed), sc.Job, "failed")
		metric(descSchedTicks, prometheus.CounterValue, float64(sc.Skipped), sc.Job, "skipped")
		metric(descSchedPruned, prometheus.CounterValue, float64(sc.Pruned), sc.Job)
	}
}

package coord

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler serves the coordinator's Prometheus metrics, read from its
// store at scrape time (so they survive a restart of the coordinator and
// need no hook in the operations' code). It is served on the metrics
// address only (symvirt coord --metrics-address), never on the API.
func (c *Coord) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(storeCollector{c}, scheduleCollector{c}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

var (
	descHosts = prometheus.NewDesc("symvirt_coord_hosts", "Hosts the coordinator knows.", nil, nil)
	descJobs  = prometheus.NewDesc("symvirt_coord_jobs", "Jobs the coordinator knows.", nil, nil)
	descBusy  = prometheus.NewDesc("symvirt_coord_jobs_busy", "Jobs with an operation under way.", nil, nil)
	descOps   = prometheus.NewDesc("symvirt_coord_operations", "Journaled operations by kind and outcome "+
		"(running: not finished yet).", []string{"kind", "outcome"}, nil)
	descCheckpoints = prometheus.NewDesc("symvirt_coord_checkpoints", "Checkpoints in the store by status.",
		[]string{"status"}, nil)
)

// storeCollector counts what the store holds.
type storeCollector struct{ c *Coord }

func (s storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHosts, descJobs, descBusy, descOps, descCheckpoints} {
		ch <- d
	}
}

func (s storeCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	if hosts, err := s.c.Hosts(); err != nil {
		ch <- prometheus.NewInvalidMetric(descHosts, err)
	} else {
		gauge(descHosts, len(hosts))
	}
	if jobs, err := s.c.Jobs(); err != nil {
		ch <- prometheus.NewInvalidMetric(descJobs, err)
	} else {
		gauge(descJobs, len(jobs))
	}
	s.c.mu.Lock()
	busy := len(s.c.busy)
	s.c.mu.Unlock()
	gauge(descBusy, busy)
	if ops, err := s.c.Ops(); err != nil {
		ch <- prometheus.NewInvalidMetric(descOps, err)
	} else {
		n := map[[2]string]int{}
		for _, rec := range ops {
			if rec.Op == nil {
				continue
			}
			outcome := "running"
			if rec.Result != nil {
				outcome = rec.Result.Outcome
			}
			n[[2]string{string(rec.Op.Kind), outcome}]++
		}
		for k, v := range n {
			gauge(descOps, v, k[0], k[1])
		}
	}
	if cks, err := s.c.Checkpoints(); err != nil {
		ch <- prometheus.NewInvalidMetric(descCheckpoints, err)
	} else {
		n := map[string]int{}
		for _, ck := range cks {
			n[ck.Status]++
		}
		for status, v := range n {
			gauge(descCheckpoints, v, status)
		}
	}
}

package hostd

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/symvirt/symvirt/internal/metricsrv"
)

var timeNow = time.Now

// metrics are hostd's Prometheus metrics, on a registry of their own so
// several Hosts (tests) do not collide.
type metrics struct {
	reg      *prometheus.Registry
	ops      *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// pause is the vCPU pause of live checkpoints' snapshot points.
	pause prometheus.Histogram
	// fence is how long a job's network fence held a VM's traffic.
	fence prometheus.Histogram
	// hold is how long a job-scoped fence held the frames from a VM's
	// peers (peerhold.go), and holdDropped what it could not keep.
	hold        prometheus.Histogram
	holdDropped prometheus.Counter
	// addr is where the metrics address listens, if there is one.
	addr net.Addr
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "symvirt_hostd_operations_total",
			Help: "VM operations by kind and result.",
		}, []string{"op", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "symvirt_hostd_operation_seconds",
			Help:    "Duration of VM operations.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}, []string{"op"}),
		pause: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "symvirt_hostd_live_snapshot_pause_seconds",
			Help:    "How long a live checkpoint's snapshot point stopped the vCPUs (QEMU's STOP to RESUME).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		fence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "symvirt_hostd_network_fence_seconds",
			Help:    "How long a live job checkpoint's network fence held a VM's packets.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		hold: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "symvirt_hostd_network_hold_seconds",
			Help:    "How long a live job checkpoint's job-scoped fence held the frames a VM got from the job's other VMs.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		holdDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "symvirt_hostd_network_hold_dropped_frames_total",
			Help: "Frames a job-scoped fence dropped: over its bounds, or its relay's queue full.",
		}),
	}
	m.reg.MustRegister(m.ops, m.duration, m.pause, m.fence, m.hold, m.holdDropped, prometheus.NewGoCollector())
	return m
}

func (m *metrics) observe(op, result string, start time.Time) {
	m.ops.WithLabelValues(op, result).Inc()
	m.duration.WithLabelValues(op).Observe(timeNow().Sub(start).Seconds())
}

// ramPoolFunc exports the RAM pool's size and hand-outs (rampool.go).
func (m *metrics) ramPoolFunc(bytes, taken func() int64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "symvirt_hostd_ram_pool_bytes",
		Help: "Guest RAM of VMs that left, kept zeroed for VMs that arrive.",
	}, func() float64 { return float64(bytes()) }), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "symvirt_hostd_ram_pool_taken_total",
		Help: "RAM files the pool handed to a new QEMU.",
	}, func() float64 { return float64(taken()) }))
}

// vmsFunc exports the number of VMs per state, computed at scrape time.
func (m *metrics) vmsFunc(counts func() map[string]int) {
	m.reg.MustRegister(&vmCollector{counts: counts, desc: prometheus.NewDesc(
		"symvirt_hostd_vms", "VMs on this host by state.", []string{"state"}, nil)})
}

type vmCollector struct {
	counts func() map[string]int
	desc   *prometheus.Desc
}

func (c *vmCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *vmCollector) Collect(ch chan<- prometheus.Metric) {
	for state, n := range c.counts() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), state)
	}
}

func (c Config) metricsConfig() metricsrv.Config {
	return metricsrv.Config{Address: c.MetricsAddress, TLSCert: c.TLSCert, TLSKey: c.TLSKey, TLSCA: c.TLSCA}
}

// serveMetrics serves /metrics on the config's metrics address, if any,
// until ctx is done: a scraper needs no coordinator certificate there.
func (h *Host) serveMetrics(ctx context.Context) error {
	addr, err := metricsrv.Serve(ctx, h.log, h.cfg.metricsConfig(), h.metricsHandler())
	h.metrics.addr = addr
	return err
}

func (h *Host) metricsHandler() http.Handler {
	return promhttp.HandlerFor(h.metrics.reg, promhttp.HandlerOpts{})
}

// MetricsAddr is where the metrics address listens (nil without one).
func (h *Host) MetricsAddr() net.Addr { return h.metrics.addr }

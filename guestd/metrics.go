package guestd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/symvirt/symvirt/ebpf/taint"
)

// metrics are guestd's Prometheus metrics, in a registry of their own (not
// the global one: tests run several agents in one process).
type metrics struct {
	reg      *prometheus.Registry
	rounds   *prometheus.CounterVec
	sessions prometheus.Counter
}

func newMetrics(hooks *HookServer) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "symvirt_guestd_rounds_total",
			Help: "Rounds ended, by operation and outcome (refused: the guest answered REFUSED).",
		}, []string{"op", "outcome"}),
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "symvirt_guestd_host_sessions_total",
			Help: "Host connections (HELLOs) served.",
		}),
	}
	m.reg.MustRegister(m.rounds, m.sessions,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "symvirt_guestd_registered_apps",
			Help: "Applications registered on the hook socket (rounds wait for their SYNC).",
		}, func() float64 { return float64(hooks.Registered()) }))
	return m
}

// serve exposes /metrics on addr until the returned stop is called.
func (m *metrics) serve(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("guestd: metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// addFreezer exports how many processes are frozen now.
func (m *metrics) addFreezer(f *freezer) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "symvirt_guestd_frozen_processes",
		Help: "Processes frozen now by a dependency-aware migration round.",
	}, func() float64 { return float64(f.frozenCount()) }))
}

// addTaint exports the taint tracker's counts (only when it runs: the
// metrics' absence says there is no tracker).
func (m *metrics) addTaint(src taint.Source) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "symvirt_guestd_tainted_processes",
			Help: "Processes that depend on the world outside the VM (eBPF taint tracker); they are never frozen.",
		}, func() float64 { n, _ := src.Counts(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "symvirt_guestd_taint_events_total",
			Help: "Taint events (taints and exits of tainted processes) the tracker has received.",
		}, func() float64 { _, ev := src.Counts(); return float64(ev) }),
	)
}

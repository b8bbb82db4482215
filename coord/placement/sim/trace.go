package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/symvirt/symvirt/coord/placement"
)

const gib = 1 << 30

// Config is one simulation's parameters.
type Config struct {
	Hosts    int                 `json:"hosts"`
	VMs      int                 `json:"vms"`
	Duration time.Duration       `json:"duration"`
	Step     time.Duration       `json:"step"`
	Window   time.Duration       `json:"window"`
	Seed     uint64              `json:"seed"`
	Policy   placement.Policy    `json:"policy"`
	Capacity placement.Resources `json:"capacity"`
}

// Default is 100 hosts of 32 CPUs and 128 GiB, 1,000 VMs, a day in
// 5-minute rounds, usage measured over 15 minutes, and a policy packing
// to 80% with a high-water mark at 90% and a low one at 50%.
func Default() Config {
	return Config{
		Hosts: 100, VMs: 1000, Duration: 24 * time.Hour, Step: 5 * time.Minute, Window: 15 * time.Minute, Seed: 1,
		Policy:   placement.Policy{Target: 0.8, High: 0.9, Low: 0.5},
		Capacity: placement.Resources{CPU: 32, Mem: 128 * gib},
	}
}

func (c Config) steps() int { return int(c.Duration / c.Step) }

// check refuses parameters the simulation cannot run.
func (c Config) check() error {
	if c.Hosts < 1 || c.VMs < 0 || c.Step <= 0 || c.Duration < c.Step || c.Window < 0 {
		return fmt.Errorf("%w: hosts %d, vms %d, duration %v, step %v, window %v",
			placement.ErrInvalid, c.Hosts, c.VMs, c.Duration, c.Step, c.Window)
	}
	return nil
}

// vmTrace is one VM's load model: CPU use is vcpus × (base + amp ×
// cos(2π(t − peak)/24h) + bursts), clamped to [2%, 100%]; memory is its
// resident set, ±10% with the same daily swing.
type vmTrace struct {
	vcpus, base, amp, peak float64 // peak in hours
	mem                    float64 // bytes
	group                  string
	bursts                 []burst
}

type burst struct {
	from, to int // steps, to exclusive
	extra    float64
}

// Trace is the generated load of every VM at every step.
type Trace struct {
	c   Config
	vms []vmTrace
}

// NewTrace draws the VMs: 1, 2 or 4 vCPUs (half, 30%, 20%), 1 GiB per
// vCPU of which 40–90% resident, a base load of 15–40% swinging by 30–90%
// of itself with its peak between 10:00 and 18:00, about one burst a day
// of 5–30 minutes adding 30–60%; one VM in five is in an anti-affinity
// pair with its neighbour.
func NewTrace(c Config) *Trace {
	r := rand.New(rand.NewPCG(c.Seed, 0x5111))
	t := &Trace{c: c}
	steps := c.steps()
	for i := range c.VMs {
		v := vmTrace{vcpus: []float64{1, 1, 1, 1, 1, 2, 2, 2, 4, 4}[r.IntN(10)]}
		v.base = 0.15 + 0.25*r.Float64()
		v.amp = v.base * (0.3 + 0.6*r.Float64())
		v.peak = 10 + 8*r.Float64()
		v.mem = v.vcpus * gib * (0.4 + 0.5*r.Float64())
		if i%10 < 2 {
			v.group = fmt.Sprintf("pair%d", i/10)
		}
		perDay := float64(steps) * float64(c.Step) / float64(24*time.Hour)
		for range poisson(r, perDay) {
			from := r.IntN(max(steps, 1))
			n := int((5*time.Minute + time.Duration(r.Int64N(int64(25*time.Minute)))) / c.Step)
			v.bursts = append(v.bursts, burst{from: from, to: from + max(n, 1), extra: 0.3 + 0.3*r.Float64()})
		}
		t.vms = append(t.vms, v)
	}
	return t
}

// poisson draws a Poisson count with mean m (Knuth; m is small here).
func poisson(r *rand.Rand, m float64) int {
	limit, p, k := math.Exp(-m), 1.0, 0
	for {
		if p *= r.Float64(); p <= limit {
			return k
		}
		k++
	}
}

// Use is VM i's actual usage during step s.
func (t *Trace) Use(i, s int) placement.Resources {
	v := t.vms[i]
	hour := float64(time.Duration(s)*t.c.Step) / float64(time.Hour)
	daily := math.Cos(2 * math.Pi * (hour - v.peak) / 24)
	u := v.base + v.amp*daily
	for _, b := range v.bursts {
		if s >= b.from && s < b.to {
			u += b.extra
		}
	}
	u = min(max(u, 0.02), 1)
	return placement.Resources{CPU: v.vcpus * u, Mem: int64(v.mem * (1 + 0.1*daily))}
}

// Measured is VM i's usage as the coordinator reports it at step s: the
// per-resource maximum over the window ending there.
func (t *Trace) Measured(i, s int) placement.Resources {
	m := t.Use(i, s)
	for k := 1; time.Duration(k)*t.c.Step < t.c.Window && s-k >= 0; k++ {
		u := t.Use(i, s-k)
		m.CPU, m.Mem = max(m.CPU, u.CPU), max(m.Mem, u.Mem)
	}
	return m
}

package sim

import (
	"fmt"
	"testing"
	"time"
)

func small() Config {
	c := Default()
	c.Hosts, c.VMs, c.Duration, c.Step, c.Seed = 12, 90, 12*time.Hour, 10*time.Minute, 3
	return c
}

// TestRunSanity runs a small day (12 hosts, 90 VMs) for both strategies
// and checks every round: no host above its capacity after it, no
// anti-affinity pair sharing a host, every move starting where its VM was
// (Run refuses otherwise), no VM moving twice, and the migrations equal to
// the placement changes. The planner must make
// fewer migrations than first-fit decreasing from scratch and release
// hosts.
func TestRunSanity(t *testing.T) {
	c := small()
	res := map[string]Result{}
	for _, s := range []Strategy{Planner{Policy: c.Policy}, FFD{Policy: c.Policy}} {
		r, err := Run(c, s)
		if err != nil {
			t.Fatal(err)
		}
		for i, round := range r.Log {
			if round.MaxFill > 1+1e-9 || round.SharedGroups > 0 {
				t.Errorf("%s round %d: fullest host at %.3f, %d pairs sharing a host", s.Name(), i, round.MaxFill, round.SharedGroups)
			}
			if round.Moves != round.Changes || round.Repeats != 0 {
				t.Errorf("%s round %d: %d moves, %d changes, %d repeats", s.Name(), i, round.Moves, round.Changes, round.Repeats)
			}
		}
		if r.Rounds != 72 || r.Migrations < r.Changes {
			t.Errorf("%s: %d rounds, %d migrations, %d changes", s.Name(), r.Rounds, r.Migrations, r.Changes)
		}
		t.Logf("%s: hosts in use avg %.1f min %d max %d, migrations %d, host-minutes above high %.0f, actions %v",
			s.Name(), r.AvgHosts, r.MinHosts, r.MaxHosts, r.Migrations, r.OverHighHostMinutes, r.Actions)
		res[s.Name()] = r
	}
	if p, f := res["planner"], res["ffd"]; p.Migrations >= f.Migrations || p.MinHosts >= c.Hosts {
		t.Errorf("planner: %d migrations (ffd %d), at least %d hosts in use", p.Migrations, f.Migrations, p.MinHosts)
	}
}

// TestRunDeterministic: the same seed gives the same day.
func TestRunDeterministic(t *testing.T) {
	c := small()
	a, errA := Run(c, Planner{Policy: c.Policy})
	b, errB := Run(c, Planner{Policy: c.Policy})
	if fmt.Sprint(a, errA) != fmt.Sprint(b, errB) {
		t.Fatalf("two runs differ:\n%+v\n%+v", a, b)
	}
}

// TestTraceShape: the load has its daily swing and stays within each
// VM's vCPUs, and the measured usage is never below the actual.
func TestTraceShape(t *testing.T) {
	c := Default()
	c.VMs = 50
	tr := NewTrace(c)
	var night, day float64
	for i := range c.VMs {
		for s := range c.steps() {
			u, m := tr.Use(i, s), tr.Measured(i, s)
			if u.CPU <= 0 || u.CPU > tr.vms[i].vcpus+1e-9 || m.CPU < u.CPU || m.Mem < u.Mem {
				t.Fatalf("vm %d step %d: use %+v measured %+v", i, s, u, m)
			}
		}
		night += tr.Use(i, 3*12).CPU // 03:00
		day += tr.Use(i, 14*12).CPU  // 14:00
	}
	if day < 1.5*night {
		t.Errorf("CPU at 14:00 %.1f, at 03:00 %.1f: no daily swing", day, night)
	}
}

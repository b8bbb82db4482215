package main

import (
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/coord/placement"
	"github.com/symvirt/symvirt/hostd"
)

// The plan says what it would move and free; an applied one what it did,
// which hosts are empty and which it drained or took back; the usage
// columns of hosts and jobs.
func TestConsolidateText(t *testing.T) {
	plan := coord.ConsolidateReport{Mode: "consolidate", Policy: placement.Policy{Target: 0.8, High: 0.9},
		Plan: placement.Plan{Moves: []placement.Move{{VM: "s1", Job: "j1", From: "c", To: "a"}}, Freed: []string{"c"}}}
	var b strings.Builder
	printConsolidate(&b, plan)
	for _, w := range []string{"consolidate (target 80%, high 90%): would move 1 VMs, frees c\n", "wave 0  s1  (job j1)  c -> a"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("want %q in:\n%s", w, b.String())
		}
	}
	if strings.Contains(b.String(), "now empty") {
		t.Errorf("a dry run reports empty hosts:\n%s", b.String())
	}
	plan.Applied, plan.Empty, plan.Drained = true, []string{"c", "d"}, []string{"c"}
	plan.Results = []machine.Result{{Op: "o", Kind: machine.KindMigrate, Job: "j1", Outcome: "migrated"}}
	b.Reset()
	printConsolidate(&b, plan)
	for _, w := range []string{"moved 1 VMs", "migrate of job j1: migrated\n", "hosts now empty: c, d\n", "drained (cordoned): c\n"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("want %q in:\n%s", w, b.String())
		}
	}
	if got := usageColumn(&coord.HostUsage{CPUCapacity: 2, MemCapacity: 1 << 30, CPU: 0.25, Mem: 96 << 20, VMs: 3}); got != "\tcpu 0.25/2 mem 96.0 MiB/1.00 GiB (3 VMs)" {
		t.Errorf("usage column %q", got)
	}
	ji := coord.JobInfo{Usage: map[string]*hostd.VMUsage{"a": {CPU: 0.5, Mem: 10 << 20}, "b": {CPU: 0.25, Mem: 6 << 20}}}
	if got := jobUsageColumn(ji); got != "\tcpu 0.75 mem 16.0 MiB" {
		t.Errorf("job usage column %q", got)
	}
}

func TestConsolidateUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--plan", "--apply"}, {"--apply", "--parallel", "0"}, {"extra"}} {
		var out, errb strings.Builder
		if code := run(append([]string{"symvirt", "consolidate", "--coord", "/nonexistent.sock"}, args...), &out, &errb); code != exitUsage {
			t.Errorf("consolidate %v: exit %d, want %d: %s", args, code, exitUsage, errb.String())
		}
	}
}

func TestConsolidateLoopHysteresis(t *testing.T) {
	move := []placement.Move{{VM: "v", From: "a", To: "b"}}
	out := coord.ConsolidateReport{Mode: "scale-out", Plan: placement.Plan{Moves: move}}
	in := coord.ConsolidateReport{Mode: "consolidate", Plan: placement.Plan{Moves: move, Freed: []string{"a"}}}
	for _, tc := range []struct {
		rep    coord.ConsolidateReport
		low    float64
		under  []string
		cooled bool
		want   bool
	}{
		{out, 0, nil, false, true},           // a scale out never waits
		{in, 0, nil, true, true},             // frees a host
		{in, 0, nil, false, false},           // too soon after a scale out
		{in, 0.3, nil, true, false},          // no host below --low
		{in, 0.3, []string{"a"}, true, true}, // one is
		{coord.ConsolidateReport{Mode: "consolidate", Plan: placement.Plan{Moves: move}}, 0, nil, true, false}, // frees none
	} {
		tc.rep.Underused = tc.under
		if got := worthApplying(tc.rep, tc.low, tc.cooled); got != tc.want {
			t.Errorf("%+v low %v cooled %v: %v, want %v", tc.rep, tc.low, tc.cooled, got, tc.want)
		}
	}
}

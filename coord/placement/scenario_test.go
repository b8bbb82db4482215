package placement

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestScenarios runs the readable cases in testdata/: `hosts` and `vms`
// set the cluster (one per line, key=value words), `consolidate` and
// `scaleout` print the plan after checking it move by move.
//
//	hosts
//	h1 cpu=8 mem=16 zone=a drained      (mem in GiB)
//	vms
//	v1 on=h1 cpu=1 mem=2 anti=g aff=zone=a pinned
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var hosts []Host
		var vms []VM
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			switch d.Cmd {
			case "hosts":
				hosts = nil
				for _, l := range lines(d.Input) {
					hosts = append(hosts, parseHost(t, l))
				}
				return ""
			case "vms":
				vms = nil
				for _, l := range lines(d.Input) {
					vms = append(vms, parseVM(t, l))
				}
				return ""
			case "consolidate", "scaleout":
				return runPlan(t, d, hosts, vms)
			}
			t.Fatalf("unknown command %q", d.Cmd)
			return ""
		})
	})
}

func runPlan(t *testing.T, d *datadriven.TestData, hosts []Host, vms []VM) string {
	p := Policy{Target: 0.8, High: 0.9}
	if d.HasArg("target") {
		d.ScanArgs(t, "target", &p.Target)
	}
	if d.HasArg("high") {
		d.ScanArgs(t, "high", &p.High)
	}
	plan, err := Consolidate(hosts, vms, p)
	if d.Cmd == "scaleout" {
		plan, err = ScaleOut(hosts, vms, p)
	}
	if err != nil {
		for _, s := range []error{ErrInvalid, ErrInfeasible} {
			if errors.Is(err, s) {
				return fmt.Sprintf("error (%v): %v\n", s, err)
			}
		}
		t.Fatalf("error with no sentinel: %v", err)
	}
	end, _, err := replay(hosts, vms, plan.Moves, p)
	if err == nil {
		err = valid(hosts, vms, end, p)
	}
	if err == nil {
		_, err = checkWaves(hosts, vms, plan.Moves)
	}
	if err != nil {
		t.Fatalf("plan %+v: %v", plan, err)
	}
	var b strings.Builder
	for _, m := range plan.Moves {
		fmt.Fprintf(&b, "wave %d: move %s %s -> %s\n", m.Wave, m.VM, m.From, m.To)
	}
	fmt.Fprintf(&b, "freed %v\noverloaded %v\nhosts in use %d\n", plan.Freed, plan.Overloaded, usedHosts(end))
	return b.String()
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func num(t *testing.T, s string) float64 {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func parseHost(t *testing.T, l string) Host {
	f := strings.Fields(l)
	h := Host{Name: f[0], Labels: map[string]string{}}
	for _, w := range f[1:] {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "cpu":
			h.Capacity.CPU = num(t, v)
		case "mem":
			h.Capacity.Mem = int64(num(t, v) * gib)
		case "drained":
			h.Drained = true
		default:
			h.Labels[k] = v
		}
	}
	return h
}

func parseVM(t *testing.T, l string) VM {
	f := strings.Fields(l)
	vm := VM{Name: f[0], Job: "j-" + f[0]}
	for _, w := range f[1:] {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "on":
			vm.Host = v
		case "cpu":
			vm.Use.CPU = num(t, v)
		case "mem":
			vm.Use.Mem = int64(num(t, v) * gib)
		case "anti":
			vm.AntiAffinity = v
		case "aff":
			lk, lv, _ := strings.Cut(v, "=")
			vm.Affinity = map[string]string{lk: lv}
		case "pinned":
			vm.Pinned = true
		case "job":
			vm.Job = v
		default:
			t.Fatalf("unknown VM word %q", w)
		}
	}
	return vm
}

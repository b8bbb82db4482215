package coord

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/coord/placement"
	"github.com/symvirt/symvirt/hostd"
)

// Consolidation defaults: a plan fills a host up to 80% of its capacity;
// above 90% a host is relieved (scale out). Between the two is the
// hysteresis that keeps a VM from moving back and forth.
const (
	DefaultTarget = 0.8
	DefaultHigh   = 0.9
	// consolidateReason marks the hosts consolidate cordoned (--drain): a
	// scale out may use them again, uncordoning them first.
	consolidateReason = "consolidate: emptied"
)

// ConsolidateOptions is the request of POST /v1/consolidate.
type ConsolidateOptions struct {
	// Apply runs the plan (false: a dry run).
	Apply bool `json:"apply,omitempty"`
	// Parallel bounds the migrations running at once (0: 1).
	Parallel int `json:"parallel,omitempty"`
	// Drain cordons the hosts the moves left empty.
	Drain bool `json:"drain,omitempty"`
	// Target and High are the placement policy (0: the defaults).
	Target float64 `json:"target,omitempty"`
	High   float64 `json:"high,omitempty"`
	// Low is the loop's trigger: a round consolidates only when a host
	// is filled below it (0: whenever a host can be freed).
	Low float64 `json:"low,omitempty"`
}

// ConsolidateReport is what consolidate saw, planned and did.
type ConsolidateReport struct {
	// Mode is "consolidate", or "scale-out" when a host was above High.
	Mode   string           `json:"mode"`
	Policy placement.Policy `json:"policy"`
	Hosts  []placement.Host `json:"hosts"`
	VMs    []placement.VM   `json:"vms"`
	Plan   placement.Plan   `json:"plan"`
	// Skipped names the hosts left out (unreachable), with why; their VMs
	// (Unplanned) stay where they are.
	Skipped   map[string]string `json:"skipped,omitempty"`
	Unplanned []string          `json:"unplanned,omitempty"`
	// Underused lists the hosts running VMs filled below Policy.Low.
	Underused []string `json:"underused,omitempty"`
	// Applied: the migrations, one per job moved; Empty: the hosts that
	// run no VM afterwards; Drained: the ones cordoned for it;
	// Uncordoned: consolidate's drained hosts a scale out took back.
	Applied    bool             `json:"applied,omitempty"`
	Results    []machine.Result `json:"results,omitempty"`
	Empty      []string         `json:"empty,omitempty"`
	Drained    []string         `json:"drained,omitempty"`
	Uncordoned []string         `json:"uncordoned,omitempty"`
}

// Consolidate plans (and with o.Apply runs) the moves that pack the jobs'
// VMs onto the fewest hosts, or, when a host is above the high-water
// mark, the moves that relieve it.
func (c *Coord) Consolidate(ctx context.Context, o ConsolidateOptions, progress ProgressFunc) (ConsolidateReport, error) {
	rep := ConsolidateReport{Policy: placement.Policy{Target: cmp.Or(o.Target, DefaultTarget), High: cmp.Or(o.High, DefaultHigh),
		Low: o.Low}}
	if p := rep.Policy; p.Target <= 0 || p.Target > 1 || p.High < p.Target || p.Low < 0 || p.Low > p.Target {
		return rep, fmt.Errorf("consolidate: low %.2f, target %.2f and high %.2f: want 0 <= low <= target <= high, 0 < target <= 1: %w",
			p.Low, p.Target, p.High, ErrInvalid)
	}
	if o.Parallel < 0 {
		return rep, fmt.Errorf("consolidate: parallel %d: %w", o.Parallel, ErrInvalid)
	}
	if err := c.gather(ctx, &rep); err != nil {
		return rep, err
	}
	var err error
	rep.Underused = filledBelow(rep.Hosts, rep.VMs, rep.Policy.Low)
	if over := overloaded(rep.Hosts, rep.VMs, rep.Policy.High); len(over) > 0 {
		rep.Mode = "scale-out"
		rep.Plan, err = placement.ScaleOut(offerDrained(rep.Hosts), rep.VMs, rep.Policy)
	} else {
		rep.Mode = "consolidate"
		rep.Plan, err = placement.Consolidate(rep.Hosts, rep.VMs, rep.Policy)
	}
	switch {
	case errors.Is(err, placement.ErrInfeasible):
		return rep, fmt.Errorf("consolidate: %s: %w: %w", rep.Mode, ErrNoCapacity, err)
	case err != nil:
		return rep, fmt.Errorf("consolidate: %s: %w: %w", rep.Mode, ErrInvalid, err)
	}
	c.log.Info("consolidate: planned", "mode", rep.Mode, "moves", len(rep.Plan.Moves), "freed", rep.Plan.Freed)
	if !o.Apply {
		return rep, nil
	}
	return rep, c.applyPlan(ctx, &rep, o, progress)
}

// gather fills the report's hosts (capacity, cordons) and VMs (usage)
// from the store and every reachable hostd.
func (c *Coord) gather(ctx context.Context, rep *ConsolidateReport) error {
	hosts, err := c.Hosts()
	if err != nil {
		return err
	}
	cds, err := c.cordons()
	if err != nil {
		return err
	}
	jobs, err := c.Jobs()
	if err != nil {
		return err
	}
	views := c.hostViews(ctx, hosts)
	rep.Skipped = map[string]string{}
	for _, h := range hosts {
		v := views[h.Name]
		if v.err != nil {
			rep.Skipped[h.Name] = v.err.Error()
			continue
		}
		cd, cordoned := cds[h.Name]
		ph := placement.Host{Name: h.Name, Capacity: placement.Resources{CPU: v.info.Capacity.CPU, Mem: v.info.Capacity.Mem},
			Drained: cordoned}
		if cordoned && cd.Reason == consolidateReason {
			ph.Labels = map[string]string{drainedLabel: "true"}
		}
		rep.Hosts = append(rep.Hosts, ph)
	}
	for _, j := range jobs {
		for _, jv := range j.VMs {
			if v, ok := views[jv.Host]; !ok || v.err != nil {
				rep.Unplanned = append(rep.Unplanned, jv.Name)
				continue
			}
			rep.VMs = append(rep.VMs, placementVM(j, jv, views[jv.Host]))
		}
	}
	return nil
}

// drainedLabel marks, in a plan's input, a host consolidate drained.
const drainedLabel = "symvirt.consolidate/drained"

// placementVM is a job's VM as the planner sees it. A VM that is not
// running stays where it is; one without usage figures yet (just started
// or moved) counts its configured memory and no CPU.
func placementVM(j Job, jv JobVM, v hostView) placement.VM {
	pv := placement.VM{Name: jv.Name, Job: j.Name, Host: jv.Host, AntiAffinity: cmp.Or(jv.AntiAffinity, j.AntiAffinity)}
	info, ok := v.vms[jv.Name]
	switch {
	case !ok || info.State != "running":
		pv.Pinned = true
	case info.Usage != nil:
		pv.Use = placement.Resources{CPU: info.Usage.CPU, Mem: info.Usage.Mem}
	default:
		pv.Use = placement.Resources{Mem: int64(info.Spec.Memory) << 20}
	}
	if !ok && jv.Spec != nil {
		pv.Use.Mem = int64(jv.Spec.Memory) << 20
	}
	return pv
}

// hostView is one hostd's answer: its capacity and its VMs by name.
type hostView struct {
	info hostd.HostInfo
	vms  map[string]hostd.VMInfo
	err  error
}

// hostViews asks every host at once, each bounded by a few seconds.
func (c *Coord) hostViews(ctx context.Context, hosts []Host) map[string]hostView {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]hostView{}
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			v := hostView{vms: map[string]hostd.VMInfo{}}
			cl := c.client(h.Addr)
			if v.info, v.err = cl.Host(hctx); v.err == nil {
				var list []hostd.VMInfo
				list, v.err = cl.List(hctx)
				for _, vm := range list {
					v.vms[vm.Name] = vm
				}
			}
			if v.err != nil {
				v.err = fmt.Errorf("host %s: %w", h.Name, v.err)
			}
			mu.Lock()
			out[h.Name] = v
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// filledBelow lists the hosts running VMs whose fill (the larger of CPU
// and memory, as a fraction of capacity) is below low.
func filledBelow(hosts []placement.Host, vms []placement.VM, low float64) []string {
	use := placement.Loads(vms)
	var out []string
	for _, h := range hosts {
		u, ok := use[h.Name]
		if ok && !h.Drained && h.Fill(u) < low {
			out = append(out, h.Name)
		}
	}
	return out
}

// overloaded lists the hosts whose VMs use more than high of their
// capacity (CPU or memory).
func overloaded(hosts []placement.Host, vms []placement.VM, high float64) []string {
	use := placement.Loads(vms)
	var out []string
	for _, h := range hosts {
		if u := use[h.Name]; u.CPU > high*h.Capacity.CPU || float64(u.Mem) > high*float64(h.Capacity.Mem) {
			out = append(out, h.Name)
		}
	}
	return out
}

// offerDrained lets a scale out use the hosts consolidate drained (they
// are uncordoned before a VM goes there).
func offerDrained(hosts []placement.Host) []placement.Host {
	out := slices.Clone(hosts)
	for i, h := range out {
		if h.Labels[drainedLabel] == "true" {
			out[i].Drained = false
		}
	}
	return out
}

// hostsString is a list of host names for messages.
func hostsString(hosts []string) string {
	if len(hosts) == 0 {
		return "none"
	}
	return strings.Join(hosts, ", ")
}

package sim

import (
	"cmp"
	"slices"

	"github.com/symvirt/symvirt/coord/placement"
)

// Strategy decides each round's moves from the hosts and the VMs (at
// their current host, with their measured usage). Action names what it
// did ("" for nothing), for the counts in Result.
type Strategy interface {
	Name() string
	Round(hosts []placement.Host, vms []placement.VM) (moves []placement.Move, action string, err error)
}

// Planner is coord/placement with hysteresis: ScaleOut when a host is
// above High; otherwise Consolidate when the hosts in use carry, on the
// whole, less than Low of their capacity (CPU or memory, the fuller);
// otherwise nothing.
type Planner struct{ Policy placement.Policy }

func (Planner) Name() string { return "planner" }

func (p Planner) Round(hosts []placement.Host, vms []placement.VM) ([]placement.Move, string, error) {
	load := placement.Loads(vms)
	var used placement.Resources
	var carried placement.Resources
	for _, h := range hosts {
		l, ok := load[h.Name]
		if !ok {
			continue
		}
		if h.Fill(l) > p.Policy.High {
			plan, err := placement.ScaleOut(hosts, vms, p.Policy)
			return plan.Moves, "scaleout", err
		}
		used.CPU += h.Capacity.CPU
		used.Mem += h.Capacity.Mem
		carried.CPU += l.CPU
		carried.Mem += l.Mem
	}
	if used.CPU > 0 && max(carried.CPU/used.CPU, float64(carried.Mem)/float64(used.Mem)) < p.Policy.Low {
		plan, err := placement.Consolidate(hosts, vms, p.Policy)
		return plan.Moves, "consolidate", err
	}
	return nil, "", nil
}

// FFD places every VM from scratch each round, largest first, on the
// first host (by name) that takes it within the Target without another
// VM of its anti-affinity group; a VM no host takes stays where it is.
type FFD struct{ Policy placement.Policy }

func (FFD) Name() string { return "ffd" }

func (f FFD) Round(hosts []placement.Host, vms []placement.VM) ([]placement.Move, string, error) {
	order := slices.Clone(vms)
	size := func(v placement.VM) float64 {
		return max(v.Use.CPU/hosts[0].Capacity.CPU, float64(v.Use.Mem)/float64(hosts[0].Capacity.Mem))
	}
	slices.SortStableFunc(order, func(a, b placement.VM) int {
		if c := cmp.Compare(size(b), size(a)); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	load := map[string]placement.Resources{}
	groups := map[[2]string]bool{}
	var moves []placement.Move
	for _, v := range order {
		to := v.Host
		for _, h := range hosts {
			l := load[h.Name]
			l.CPU += v.Use.CPU
			l.Mem += v.Use.Mem
			if !h.Drained && h.Fill(l) <= f.Policy.Target+1e-9 && (v.AntiAffinity == "" || !groups[[2]string{v.AntiAffinity, h.Name}]) {
				to = h.Name
				break
			}
		}
		l := load[to]
		l.CPU += v.Use.CPU
		l.Mem += v.Use.Mem
		load[to] = l
		groups[[2]string{v.AntiAffinity, to}] = true
		if to != v.Host {
			moves = append(moves, placement.Move{VM: v.Name, Job: v.Job, From: v.Host, To: to})
		}
	}
	return moves, "place", nil
}

package placement

import (
	"fmt"
	"slices"
)

// The checks here are written independently of the planner: names, not
// indexes, and plain loops.

// assignment maps VM name to host name.
type assignment map[string]string

func initial(vms []VM) assignment {
	a := assignment{}
	for _, v := range vms {
		a[v.Name] = v.Host
	}
	return a
}

func hostByName(hosts []Host, name string) (Host, bool) {
	for _, h := range hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// within reports whether load fits in frac of h's capacity.
func within(h Host, load Resources, frac float64) bool {
	return load.CPU <= frac*h.Capacity.CPU+1e-9 && float64(load.Mem) <= frac*float64(h.Capacity.Mem)*(1+1e-9)
}

func loads(vms []VM, a assignment) map[string]Resources {
	l := map[string]Resources{}
	for _, v := range vms {
		r := l[a[v.Name]]
		r.CPU += v.Use.CPU
		r.Mem += v.Use.Mem
		l[a[v.Name]] = r
	}
	return l
}

// valid checks a final assignment against the contract: pinned VMs
// stay; a moved VM goes to a host not drained that carries its affinity
// labels; a host that receives a VM ends within the Target; no two VMs of
// an anti-affinity group share a host.
func valid(hosts []Host, vms []VM, a assignment, p Policy) error {
	recv := map[string]bool{}
	seen := map[[2]string]string{}
	for _, v := range vms {
		to := a[v.Name]
		h, ok := hostByName(hosts, to)
		if !ok {
			return fmt.Errorf("%s on unknown host %q", v.Name, to)
		}
		if to != v.Host {
			if v.Pinned {
				return fmt.Errorf("pinned %s moved", v.Name)
			}
			if h.Drained {
				return fmt.Errorf("%s moved to drained %s", v.Name, to)
			}
			for k, val := range v.Affinity {
				if h.Labels[k] != val {
					return fmt.Errorf("%s moved to %s without label %s=%s", v.Name, to, k, val)
				}
			}
			recv[to] = true
		}
		if v.AntiAffinity != "" {
			key := [2]string{v.AntiAffinity, to}
			if other, dup := seen[key]; dup {
				return fmt.Errorf("%s and %s of group %s share %s", other, v.Name, v.AntiAffinity, to)
			}
			seen[key] = v.Name
		}
	}
	l := loads(vms, a)
	for name := range recv {
		h, _ := hostByName(hosts, name)
		if !within(h, l[name], p.Target) {
			return fmt.Errorf("%s receives VMs and ends at %+v over target", name, l[name])
		}
	}
	return nil
}

func usedHosts(a assignment) int {
	hs := map[string]bool{}
	for _, h := range a {
		hs[h] = true
	}
	return len(hs)
}

// replay applies a plan's moves in order, checking each VM moves at most
// once and each move starts where the VM is and leaves its destination (not drained) within the Target
// with no other VM of the mover's anti-affinity group; it returns the
// final assignment and how many moves filled their destination past the
// Target (within its capacity) for the while.
func replay(hosts []Host, vms []VM, moves []Move, p Policy) (a assignment, pastTarget int, err error) {
	a = initial(vms)
	byName := map[string]VM{}
	for _, v := range vms {
		byName[v.Name] = v
	}
	movedAlready := map[string]bool{}
	for i, m := range moves {
		if movedAlready[m.VM] {
			return nil, 0, fmt.Errorf("move %d %+v: the VM moves twice", i, m)
		}
		movedAlready[m.VM] = true
		v, ok := byName[m.VM]
		if !ok || a[m.VM] != m.From || m.From == m.To {
			return nil, 0, fmt.Errorf("move %d %+v: VM is on %q", i, m, a[m.VM])
		}
		if v.Job != m.Job {
			return nil, 0, fmt.Errorf("move %d %+v: job is %q", i, m, v.Job)
		}
		a[m.VM] = m.To
		h, ok := hostByName(hosts, m.To)
		if !ok || h.Drained || !within(h, loads(vms, a)[m.To], 1) {
			return nil, 0, fmt.Errorf("move %d %+v: destination drained, unknown or over capacity", i, m)
		}
		pastTarget += btoi(!within(h, loads(vms, a)[m.To], p.Target))
		for _, o := range vms {
			if o.Name != v.Name && v.AntiAffinity != "" && o.AntiAffinity == v.AntiAffinity && a[o.Name] == m.To {
				return nil, 0, fmt.Errorf("move %d %+v: joins %s of group %s", i, m, o.Name, v.AntiAffinity)
			}
		}
	}
	return a, pastTarget, nil
}

// emptied lists the hosts with VMs in before and none in after.
func emptied(vms []VM, after assignment) []string {
	inUse := map[string]bool{}
	for _, h := range after {
		inUse[h] = true
	}
	var out []string
	for _, v := range vms {
		if !inUse[v.Host] && !slices.Contains(out, v.Host) {
			out = append(out, v.Host)
		}
	}
	slices.Sort(out)
	return out
}

// checkWaves checks that the moves of each wave can run at once: numbered
// from 0 without gaps, in plan order; while a wave runs, each destination
// holds its VMs, the wave's leaving VMs (still there until their move
// ends) and all the wave's arrivals within its capacity, and no arrival
// meets another VM of its anti-affinity group. It returns the waves.
func checkWaves(hosts []Host, vms []VM, moves []Move) (int, error) {
	a := initial(vms)
	byName := map[string]VM{}
	for _, v := range vms {
		byName[v.Name] = v
	}
	waves := 0
	for start := 0; start < len(moves); waves++ {
		end := start
		for end < len(moves) && moves[end].Wave == waves {
			end++
		}
		if end == start {
			return 0, fmt.Errorf("move %d: wave %d, want %d", start, moves[start].Wave, waves)
		}
		during := map[string][]VM{} // host -> VMs on it while the wave runs
		for _, v := range vms {
			during[a[v.Name]] = append(during[a[v.Name]], v)
		}
		for _, m := range moves[start:end] {
			during[m.To] = append(during[m.To], byName[m.VM])
		}
		for _, m := range moves[start:end] {
			h, _ := hostByName(hosts, m.To)
			var load Resources
			for _, o := range during[m.To] {
				load.CPU += o.Use.CPU
				load.Mem += o.Use.Mem
				if g := byName[m.VM].AntiAffinity; g != "" && o.Name != m.VM && o.AntiAffinity == g {
					return 0, fmt.Errorf("wave %d: %s arrives on %s with %s of group %s", waves, m.VM, m.To, o.Name, g)
				}
			}
			if !within(h, load, 1) {
				return 0, fmt.Errorf("wave %d: %s holds %+v, over capacity", waves, m.To, load)
			}
		}
		for _, m := range moves[start:end] {
			a[m.VM] = m.To
		}
		start = end
	}
	return waves, nil
}

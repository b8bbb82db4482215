package placement

import (
	"errors"
	"slices"
	"sort"
)

// Temporary stand-in until the planner lands (deleted then).

var ErrInfeasible = errors.New("placement: infeasible")

func fits(h Host, load Resources, v VM, p Policy, lim float64) bool {
	return load.CPU+v.Use.CPU <= h.Capacity.CPU*lim && float64(load.Mem+v.Use.Mem) <= float64(h.Capacity.Mem)*lim
}

func loads(hosts []Host, vms []VM) map[string]Resources {
	l := map[string]Resources{}
	for _, v := range vms {
		r := l[v.Host]
		r.CPU += v.Use.CPU
		r.Mem += v.Use.Mem
		l[v.Host] = r
	}
	return l
}

func Consolidate(hosts []Host, vms []VM, p Policy) (Plan, error) {
	l := loads(hosts, vms)
	count := map[string]int{}
	for _, v := range vms {
		count[v.Host]++
	}
	order := slices.Clone(hosts)
	sort.SliceStable(order, func(i, j int) bool { return count[order[i].Name] < count[order[j].Name] })
	var plan Plan
	gone := map[string]bool{}
	for _, src := range order {
		if count[src.Name] == 0 {
			continue
		}
		tl := map[string]Resources{}
		for k, v := range l {
			tl[k] = v
		}
		var moves []Move
		ok := true
		for _, v := range vms {
			if v.Host != src.Name {
				continue
			}
			placed := false
			for _, d := range hosts {
				if d.Name == src.Name || d.Drained || gone[d.Name] || count[d.Name] == 0 && !d.Drained && false {
					continue
				}
				if count[d.Name] == 0 || !fits(d, tl[d.Name], v, p, p.Target) {
					continue
				}
				r := tl[d.Name]
				r.CPU += v.Use.CPU
				r.Mem += v.Use.Mem
				tl[d.Name] = r
				moves = append(moves, Move{VM: v.Name, Job: v.Job, From: src.Name, To: d.Name})
				placed = true
				break
			}
			if !placed || v.Pinned {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		l = tl
		gone[src.Name] = true
		for _, m := range moves {
			count[m.To]++
		}
		count[src.Name] = 0
		plan.Moves = append(plan.Moves, moves...)
		plan.Freed = append(plan.Freed, src.Name)
	}
	return plan, nil
}

func ScaleOut(hosts []Host, vms []VM, p Policy) (Plan, error) {
	l := loads(hosts, vms)
	var plan Plan
	for _, h := range hosts {
		for _, v := range vms {
			r := l[h.Name]
			if v.Host != h.Name || (r.CPU <= h.Capacity.CPU*p.High && float64(r.Mem) <= float64(h.Capacity.Mem)*p.High) {
				continue
			}
			for _, d := range hosts {
				if d.Name == h.Name || d.Drained || !fits(d, l[d.Name], v, p, p.Target) {
					continue
				}
				r.CPU -= v.Use.CPU
				r.Mem -= v.Use.Mem
				l[h.Name] = r
				dr := l[d.Name]
				dr.CPU += v.Use.CPU
				dr.Mem += v.Use.Mem
				l[d.Name] = dr
				plan.Moves = append(plan.Moves, Move{VM: v.Name, Job: v.Job, From: h.Name, To: d.Name})
				break
			}
		}
	}
	return plan, nil
}

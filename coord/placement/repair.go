package placement

import (
	"fmt"
	"slices"
)

// repairAntiAffinity moves VMs off hosts where their anti-affinity group
// has more than one member, keeping one and sending the others to the tightest host that takes them, hosts in
// use first.
func (s *state) repairAntiAffinity() ([]Move, error) {
	var moves []Move
	for h := range s.hosts {
		groups := make([]string, 0, len(s.groups[h]))
		for g, n := range s.groups[h] {
			if n > 1 {
				groups = append(groups, g)
			}
		}
		slices.Sort(groups)
		for _, g := range groups {
			ms, err := s.spreadGroup(h, g)
			if err != nil {
				return nil, err
			}
			moves = append(moves, ms...)
		}
	}
	return moves, nil
}

// spreadGroup leaves one VM of group g on host h and moves the rest.
func (s *state) spreadGroup(h int, g string) ([]Move, error) {
	var members []int
	for _, v := range s.on(h) {
		if s.vms[v].AntiAffinity == g {
			members = append(members, v)
		}
	}
	// The member that stays is the pinned one, else one no host takes,
	// else the largest: the small ones are the easiest to place.
	s.bySizeDesc(members)
	stuck := make(map[int]bool, len(members))
	for _, v := range members {
		stuck[v] = s.bestFit(v, func(int) bool { return true }) < 0
	}
	slices.SortStableFunc(members, func(a, b int) int {
		if c := btoi(s.vms[b].Pinned) - btoi(s.vms[a].Pinned); c != 0 {
			return c
		}
		return btoi(stuck[b]) - btoi(stuck[a])
	})
	if len(members) > 1 && s.vms[members[1]].Pinned {
		return nil, fmt.Errorf("%w: pinned VMs %q and %q of anti-affinity group %q share host %q",
			ErrInfeasible, s.vms[members[0]].Name, s.vms[members[1]].Name, g, s.hosts[h].Name)
	}
	var moves []Move
	for _, v := range members[1:] {
		d := s.bestFit(v, func(d int) bool { return s.count[d] > 0 })
		if d < 0 {
			d = s.bestFit(v, func(int) bool { return true })
		}
		if d < 0 {
			return nil, fmt.Errorf("%w: no host takes VM %q away from its anti-affinity group %q on %q",
				ErrInfeasible, s.vms[v].Name, g, s.hosts[h].Name)
		}
		moves = append(moves, s.move(v, d))
	}
	return moves, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

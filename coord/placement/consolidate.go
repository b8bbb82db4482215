package placement

import (
	"cmp"
	"slices"
)

// Consolidate plans moves that leave as many hosts empty as it can, and
// among the plans freeing that many, as few moves as it finds. Inputs up
// to exactVMs VMs are searched exactly (branch and bound, with a node
// budget); larger ones are planned greedily, emptying the hosts with the
// fewest and smallest VMs first. The moves are ordered so that every
// intermediate placement keeps each destination within the Target.
func Consolidate(hosts []Host, vms []VM, p Policy) (Plan, error) {
	s, err := newState(hosts, vms, p)
	if err != nil {
		return Plan{}, err
	}
	best, herr := s.consolidateGreedy()
	if len(s.vms) <= exactVMs {
		if ex, ok := s.consolidateExact(best); ok {
			best, herr = ex, nil
		}
	}
	if herr != nil {
		return Plan{}, herr
	}
	return best.plan(s), nil
}

// result is a candidate plan: its final state and its ordered moves.
type result struct {
	end   *state
	moves []Move
}

// better reports whether r beats o: fewer hosts in use, then fewer moves.
func (r result) better(o result) bool {
	if o.end == nil {
		return r.end != nil
	}
	if a, b := r.end.used(), o.end.used(); a != b {
		return a < b
	}
	return len(r.moves) < len(o.moves)
}

func (r result) plan(start *state) Plan {
	return Plan{Moves: r.moves, Freed: r.end.freed(start), Overloaded: r.end.overloaded()}
}

// overloaded lists the hosts above Policy.High (none when High is unset).
func (s *state) overloaded() []string {
	var out []string
	for h := range s.hosts {
		if s.p.High > 0 && s.over(h, s.p.High) {
			out = append(out, s.hosts[h].Name)
		}
	}
	return out
}

// consolidateGreedy repairs anti-affinity, then tries to empty hosts one
// at a time in two candidate orders, keeping the better outcome.
func (s *state) consolidateGreedy() (result, error) {
	var best result
	for _, key := range []candidateKey{byFewest, byLightest} {
		w := s.clone()
		moves, err := w.repairAntiAffinity()
		if err != nil {
			return result{}, err
		}
		moves = append(moves, w.emptyHosts(w.candidates(key))...)
		if r := (result{end: w, moves: moves}); r.better(best) {
			best = r
		}
	}
	return best, nil
}

type candidateKey int

const (
	byFewest   candidateKey = iota // fewest VMs first: fewest moves per host freed
	byLightest                     // lightest load first: packs tighter
)

// candidates lists the hosts that could be emptied (some VMs, none
// pinned): drained hosts first, then by key, then by name.
func (s *state) candidates(key candidateKey) []int {
	var hs []int
	weight := make([]float64, len(s.hosts))
	for h := range s.hosts {
		if s.count[h] == 0 {
			continue
		}
		pinned := false
		for _, v := range s.on(h) {
			pinned = pinned || s.vms[v].Pinned
			weight[h] += s.size(v)
		}
		if !pinned {
			hs = append(hs, h)
		}
	}
	slices.SortStableFunc(hs, func(a, b int) int {
		if c := btoi(s.hosts[b].Drained) - btoi(s.hosts[a].Drained); c != 0 {
			return c
		}
		if key == byFewest {
			if c := cmp.Compare(s.count[a], s.count[b]); c != 0 {
				return c
			}
		}
		return cmp.Compare(weight[a], weight[b])
	})
	return hs
}

// emptyHosts tries each candidate in turn: all its VMs, largest first,
// go to the tightest other host still in use, or none move.
func (s *state) emptyHosts(cands []int) []Move {
	var moves []Move
	for _, h := range cands {
		vs := s.on(h)
		s.bySizeDesc(vs)
		mark := len(moves)
		for _, v := range vs {
			d := s.bestFit(v, func(d int) bool { return d != h && s.count[d] > 0 })
			if d < 0 {
				break
			}
			moves = append(moves, s.move(v, d))
		}
		if s.count[h] == 0 {
			continue
		}
		for i := len(moves) - 1; i >= mark; i-- {
			v := s.vmIndex(moves[i].VM)
			s.unplace(v)
			s.place(v, s.hostIdx[moves[i].From])
		}
		moves = moves[:mark]
	}
	return moves
}

// vmIndex finds a VM by name (the VMs are sorted).
func (s *state) vmIndex(name string) int {
	i, _ := slices.BinarySearchFunc(s.vms, name, func(v VM, n string) int { return cmp.Compare(v.Name, n) })
	return i
}

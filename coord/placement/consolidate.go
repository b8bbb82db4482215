package placement

import (
	"cmp"
	"slices"
)

// Consolidate plans moves that leave as many hosts empty as it can, and
// among the plans freeing that many, as few moves as it finds. It plans
// greedily first (consolidateGreedy); inputs up to exactVMs VMs are then
// searched by branch and bound for a better plan (consolidateExact). The
// moves come ordered and numbered in waves (see the package contract).
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
	start.setWaves(r.moves)
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
// at a time in three candidate orders, keeping the best outcome. Its moves
// are in an order that keeps every destination within the Target.
func (s *state) consolidateGreedy() (result, error) {
	var best result
	for _, key := range []candidateKey{byFewest, byLightest, bySmallest} {
		w := s.clone()
		moves, err := w.repairAntiAffinity()
		if err != nil {
			return result{}, err
		}
		moves = append(moves, w.emptyHosts(w.candidates(key), moves)...)
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
	bySmallest                     // smallest capacity first, then lightest: keeps the big hosts
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
		if key == bySmallest {
			ca, cb := s.hosts[a].Capacity, s.hosts[b].Capacity
			if c := cmp.Compare(ca.CPU/s.maxCap.CPU+float64(ca.Mem)/float64(s.maxCap.Mem),
				cb.CPU/s.maxCap.CPU+float64(cb.Mem)/float64(s.maxCap.Mem)); c != 0 {
				return c
			}
		}
		return cmp.Compare(weight[a], weight[b])
	})
	return hs
}

// emptyHosts tries each candidate in turn: all its VMs go to the
// tightest other hosts still in use, or none move. A host that received
// a VM (in earlier moves or here) is kept, so no VM moves twice.
func (s *state) emptyHosts(cands []int, earlier []Move) []Move {
	received := map[string]bool{}
	for _, m := range earlier {
		received[m.To] = true
	}
	var moves []Move
	for _, h := range cands {
		if received[s.hosts[h].Name] {
			continue
		}
		ms, ok := s.empty(h)
		if !ok {
			continue
		}
		for _, m := range ms {
			received[m.To] = true
		}
		moves = append(moves, ms...)
	}
	return moves
}

// empty moves every VM off host h, largest first; failing that, most
// constrained first (fewest hosts that take it); failing that too, it
// moves nothing.
func (s *state) empty(h int) ([]Move, bool) {
	into := func(d int) bool { return d != h && s.count[d] > 0 }
	vs := s.on(h)
	s.bySizeDesc(vs)
	if ms, ok := s.moveAll(vs, into); ok {
		return ms, true
	}
	options := make(map[int]int, len(vs))
	for _, v := range vs {
		for d := range s.hosts {
			options[v] += btoi(into(d) && s.canReceive(v, d))
		}
	}
	slices.SortStableFunc(vs, func(a, b int) int { return cmp.Compare(options[a], options[b]) })
	return s.moveAll(vs, into)
}

// moveAll moves VMs vs, in order, each to the tightest host into accepts,
// or, if one has none, undoes its moves and reports false.
func (s *state) moveAll(vs []int, into func(int) bool) ([]Move, bool) {
	var moves []Move
	for _, v := range vs {
		d := s.bestFit(v, into)
		if d < 0 {
			for i := len(moves) - 1; i >= 0; i-- {
				v := s.vmIndex(moves[i].VM)
				s.unplace(v)
				s.place(v, s.hostIdx[moves[i].From])
			}
			return nil, false
		}
		moves = append(moves, s.move(v, d))
	}
	return moves, true
}

// vmIndex finds a VM by name (the VMs are sorted).
func (s *state) vmIndex(name string) int {
	i, _ := slices.BinarySearchFunc(s.vms, name, func(v VM, n string) int { return cmp.Compare(v.Name, n) })
	return i
}

package placement

import "slices"

// Exact search limits: inputs up to exactVMs VMs are searched exhaustively
// unless the search visits more than exactBudget nodes, in which case the
// best plan found so far (at worst the greedy one) stands. The budget is a
// node count, not a clock, so the result stays deterministic.
const (
	exactVMs    = 16
	exactBudget = 400_000
)

// search is a branch and bound over assignments of VMs to hosts, VMs in
// order, minimising (hosts in use, moves).
type search struct {
	start   *state
	w       *state // the assigned VMs only
	order   []int  // VM indexes: pinned first, then largest first
	recv    []int  // host -> VMs assigned to it that move there
	changed int
	nodes   int
	best    result
	hosts   int // best.end.used(), or more hosts than exist
	moves   int
}

// consolidateExact searches for a plan better than seed (which may be
// empty); ok is false when it found none.
func (s *state) consolidateExact(seed result) (result, bool) {
	x := &search{start: s, w: s.clone(), recv: make([]int, len(s.hosts)), hosts: len(s.hosts) + 1}
	if seed.end != nil {
		x.hosts, x.moves = seed.end.used(), len(seed.moves)
	}
	for v := range s.vms {
		x.w.unplace(v)
		x.order = append(x.order, v)
	}
	s.bySizeDesc(x.order)
	slices.SortStableFunc(x.order, func(a, b int) int { return btoi(s.vms[b].Pinned) - btoi(s.vms[a].Pinned) })
	x.dfs(0)
	return x.best, x.best.end != nil
}

func (x *search) dfs(i int) {
	if x.nodes++; x.nodes > exactBudget {
		return
	}
	if i == len(x.order) {
		x.leaf()
		return
	}
	v := x.order[i]
	cur := x.start.loc[v]
	for _, h := range x.tries(cur) {
		if !x.ok(v, h) {
			continue
		}
		moved := btoi(h != cur)
		hosts := x.w.used() + btoi(x.w.count[h] == 0)
		if hosts > x.hosts || (hosts == x.hosts && x.changed+moved >= x.moves) {
			continue
		}
		x.w.place(v, h)
		x.recv[h] += moved
		x.changed += moved
		x.dfs(i + 1)
		x.changed -= moved
		x.recv[h] -= moved
		x.w.unplace(v)
	}
}

// tries orders the hosts to try for a VM on cur: staying first, then the
// hosts already in use, then the empty ones.
func (x *search) tries(cur int) []int {
	hs := []int{cur}
	for pass := 0; pass < 2; pass++ {
		for h := range x.w.hosts {
			if h != cur && (x.w.count[h] > 0) == (pass == 0) {
				hs = append(hs, h)
			}
		}
	}
	return hs
}

// ok reports whether VM v may be assigned to host h given the VMs
// assigned so far. A host that receives a moved VM must end within the
// Target; a host that receives none keeps what it has.
func (x *search) ok(v, h int) bool {
	cur := x.start.loc[v]
	if g := x.start.vms[v].AntiAffinity; g != "" && x.w.groups[h][g] > 0 {
		return false
	}
	if h != cur {
		return x.start.allowed(v, h) && x.w.fits(h, x.start.vms[v].Use, x.start.p.Target)
	}
	return x.recv[h] == 0 || x.w.fits(h, x.start.vms[v].Use, x.start.p.Target)
}

// leaf orders the assignment's moves and keeps it if it is the best yet.
func (x *search) leaf() {
	end := x.w.clone()
	moves, ok := x.start.orderMoves(end.loc)
	if !ok {
		return
	}
	n := end.used()
	if n < x.hosts || (n == x.hosts && len(moves) < x.moves) {
		x.best, x.hosts, x.moves = result{end: end, moves: moves}, n, len(moves)
	}
}

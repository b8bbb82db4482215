package placement

import (
	"fmt"
	"slices"
)

// Exact search limits: inputs up to exactVMs VMs are searched by branch
// and bound, exhaustively unless the search checks more than exactBudget
// (VM, host) pairs, in which case the best plan found so far (at worst
// the greedy one) stands: small inputs (the brute-force test's 8 VMs on 4
// hosts, or 16 VMs on 100 hosts) finish well within it. The budget is a
// count, not a clock, so the result stays deterministic.
const (
	exactVMs    = 40
	exactBudget = 1_000_000
)

// search is a branch and bound over assignments of VMs to hosts, VMs in
// order, minimising (hosts in use, moves).
type search struct {
	start   *state
	w       *state // the assigned VMs only
	order   []int  // VM indexes: pinned first, then largest first
	recv    []int  // host -> VMs assigned to it that move there
	left    []int  // host -> VMs starting there not yet assigned
	class   []int  // host -> interchangeable class (capacity, labels, drained)
	seen    []int  // class -> stamp of the last tries call that took it
	stamp   int
	bufs    [][]int // per depth, the hosts to try
	open    int     // hosts in use in w
	changed int
	checks  int
	best    result
	hosts   int // best.end.used(), or more hosts than exist
	moves   int
}

// consolidateExact searches for a plan better than seed (which may be
// empty); ok is false when it found none.
func (s *state) consolidateExact(seed result) (result, bool) {
	x := &search{start: s, w: s.clone(), recv: make([]int, len(s.hosts)), left: slices.Clone(s.count), hosts: len(s.hosts) + 1}
	if seed.end != nil {
		x.hosts, x.moves = seed.end.used(), len(seed.moves)
	}
	for v := range s.vms {
		x.w.unplace(v)
		x.order = append(x.order, v)
		x.bufs = append(x.bufs, make([]int, 0, len(s.hosts)))
	}
	s.bySizeDesc(x.order)
	slices.SortStableFunc(x.order, func(a, b int) int { return btoi(s.vms[b].Pinned) - btoi(s.vms[a].Pinned) })
	x.class, x.seen = s.hostClasses()
	x.dfs(0)
	return x.best, x.best.end != nil
}

// hostClasses numbers the hosts by what a placement can tell apart.
func (s *state) hostClasses() (class, seen []int) {
	ids := map[string]int{}
	for _, h := range s.hosts {
		labels := make([]string, 0, len(h.Labels))
		for k, v := range h.Labels {
			labels = append(labels, k+"="+v)
		}
		slices.Sort(labels)
		key := fmt.Sprint(h.Capacity, h.Drained, labels)
		if _, ok := ids[key]; !ok {
			ids[key] = len(ids)
		}
		class = append(class, ids[key])
	}
	return class, make([]int, len(ids))
}

func (x *search) dfs(i int) {
	if i == len(x.order) {
		x.leaf()
		return
	}
	v := x.order[i]
	cur := x.start.loc[v]
	x.left[cur]--
	defer func() { x.left[cur]++ }()
	for _, h := range x.tries(i, cur) {
		if x.checks++; x.checks > exactBudget || !x.ok(v, h) {
			continue
		}
		moved, opens := btoi(h != cur), btoi(x.w.count[h] == 0)
		if hosts := x.open + opens; hosts > x.hosts || (hosts == x.hosts && x.changed+moved >= x.moves) {
			continue
		}
		x.w.place(v, h)
		x.recv[h] += moved
		x.changed += moved
		x.open += opens
		x.dfs(i + 1)
		x.open -= opens
		x.changed -= moved
		x.recv[h] -= moved
		x.w.unplace(v)
	}
}

// tries orders the hosts to try for the VM at depth i, now on cur:
// staying first, then the hosts already in use, then the empty ones. Of
// the empty hosts no remaining VM starts on, which are interchangeable,
// only the first of each class is tried.
func (x *search) tries(i, cur int) []int {
	hs := append(x.bufs[i][:0], cur)
	for h := range x.w.hosts {
		if h != cur && x.w.count[h] > 0 {
			hs = append(hs, h)
		}
	}
	x.stamp++
	for h := range x.w.hosts {
		if h == cur || x.w.count[h] > 0 {
			continue
		}
		if x.left[h] == 0 {
			if x.seen[x.class[h]] == x.stamp {
				continue
			}
			x.seen[x.class[h]] = x.stamp
		}
		hs = append(hs, h)
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

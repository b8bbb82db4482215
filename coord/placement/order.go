package placement

// orderMoves turns a target assignment into moves from the placement s,
// each VM moving once, straight to its target. After each move its
// destination holds no other VM of the mover's anti-affinity group and is
// within its capacity, and within the Target whenever some order allows:
// a move waits for the moves that make room for it. It searches for an
// order within the Target, then for one where a move may fill its
// destination past the Target (never past its capacity) while the others
// complete. ok is false when there is none (a swap between hosts that
// cannot hold both VMs at once), or more than 64 moves.
func (s *state) orderMoves(target []int) (moves []Move, ok bool) {
	var pend []int
	for v, h := range target {
		if h != s.loc[v] {
			pend = append(pend, v)
		}
	}
	if len(pend) > 64 {
		return nil, false
	}
	for _, frac := range []float64{s.p.Target, 1} {
		if moves, ok := s.orderDirect(pend, target, frac); ok {
			return moves, true
		}
	}
	return nil, false
}

// orderBudget bounds the direct-order search (nodes), deterministically.
const orderBudget = 20_000

// orderer is a depth-first search over the sets of moves done: the
// placement depends only on that set, so a set found to lead nowhere is
// not tried again.
type orderer struct {
	w      *state
	pend   []int
	target []int
	frac   float64
	dead   map[uint64]bool
	nodes  int
	moves  []Move
}

func (s *state) orderDirect(pend, target []int, frac float64) ([]Move, bool) {
	o := &orderer{w: s.clone(), pend: pend, target: target, frac: frac, dead: map[uint64]bool{}}
	if !o.dfs(0) {
		return nil, false
	}
	return o.moves, true
}

// dfs tries the moves that keep their destination within the Target
// first, then (when frac allows more) those within frac.
func (o *orderer) dfs(done uint64) bool {
	if len(o.moves) == len(o.pend) {
		return true
	}
	if o.dead[done] || o.nodes >= orderBudget {
		return false
	}
	o.nodes++
	for pass, frac := range []float64{o.w.p.Target, o.frac} {
		if pass == 1 && frac <= o.w.p.Target {
			break
		}
		for i, v := range o.pend {
			to := o.target[v]
			if done&(1<<i) != 0 || !o.w.ready(v, to, frac) || (pass == 1 && o.w.ready(v, to, o.w.p.Target)) {
				continue
			}
			from := o.w.loc[v]
			o.moves = append(o.moves, o.w.move(v, to))
			if o.dfs(done | 1<<i) {
				return true
			}
			o.moves = o.moves[:len(o.moves)-1]
			o.w.unplace(v)
			o.w.place(v, from)
		}
	}
	o.dead[done] = true
	return false
}

// ready reports whether VM v can move to h now: no VM of its group there
// and h within frac of its capacity after the move.
func (s *state) ready(v, h int, frac float64) bool {
	if g := s.vms[v].AntiAffinity; g != "" && s.groups[h][g] > 0 {
		return false
	}
	return s.fits(h, s.vms[v].Use, frac)
}

package placement

// orderMoves turns a target assignment into moves from the placement s
// such that after each move its destination is within the Target and
// holds no other VM of the mover's anti-affinity group: a move waits for
// the moves that make room for it. When every remaining move waits on
// another (a cycle), one VM goes through a third host that has room,
// which costs one more move; failing that, a move may fill its
// destination past the Target up to its full capacity for the while (the
// headroom is there for such moments); ok is false if none can go.
func (s *state) orderMoves(target []int) (moves []Move, ok bool) {
	w := s.clone()
	var pend []int
	for v, h := range target {
		if h != w.loc[v] {
			pend = append(pend, v)
		}
	}
	detours := 0
	for len(pend) > 0 {
		i := w.firstReady(pend, target, w.p.Target)
		if i >= 0 {
			moves = append(moves, w.move(pend[i], target[pend[i]]))
			pend = append(pend[:i], pend[i+1:]...)
			continue
		}
		if detours++; detours > len(target) {
			return nil, false
		}
		if m, ok := w.detour(pend, target); ok {
			moves = append(moves, m)
			continue
		}
		i = w.firstReady(pend, target, 1)
		if i < 0 {
			return nil, false
		}
		moves = append(moves, w.move(pend[i], target[pend[i]]))
		pend = append(pend[:i], pend[i+1:]...)
	}
	return moves, true
}

// firstReady is the first pending VM whose target host takes it now
// within frac of its capacity, or -1.
func (s *state) firstReady(pend, target []int, frac float64) int {
	for i, v := range pend {
		h := target[v]
		if g := s.vms[v].AntiAffinity; g != "" && s.groups[h][g] > 0 {
			continue
		}
		if s.fits(h, s.vms[v].Use, frac) {
			return i
		}
	}
	return -1
}

// detour moves the first pending VM that some third host can take there.
func (s *state) detour(pend, target []int) (Move, bool) {
	for _, v := range pend {
		if d := s.bestFit(v, func(d int) bool { return d != target[v] }); d >= 0 {
			return s.move(v, d), true
		}
	}
	return Move{}, false
}

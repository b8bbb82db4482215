package placement

import "fmt"

// ScaleOut acts when some host is above Policy.High: it brings that host,
// and every other host above the Target (the next to cross High as load
// rises), back within the Target, the hosts above High first. From each
// it moves few VMs (the smallest whose leaving suffices, else the largest,
// and again), each to the roomiest host already in use that takes it,
// else to an empty host that is not drained. Hosts still above High are
// listed in Plan.Overloaded. With no host above High it plans nothing.
func ScaleOut(hosts []Host, vms []VM, p Policy) (Plan, error) {
	s, err := newState(hosts, vms, p)
	if err != nil {
		return Plan{}, err
	}
	if !(p.High >= p.Target && p.High <= 1) {
		return Plan{}, fmt.Errorf("%w: policy high %v is not in [target %v, 1]", ErrInvalid, p.High, p.Target)
	}
	start := s.clone()
	moves, err := s.repairAntiAffinity()
	if err != nil {
		return Plan{}, err
	}
	if len(s.overloaded()) > 0 {
		for _, frac := range []float64{p.High, p.Target} {
			for h := range s.hosts {
				if s.over(h, frac) {
					moves = append(moves, s.relieve(h)...)
				}
			}
		}
	}
	start.setWaves(moves)
	return Plan{Moves: moves, Freed: s.freed(start), Overloaded: s.overloaded()}, nil
}

// relieve moves VMs off host h until it is within the Target or no VM
// left on it can go anywhere.
func (s *state) relieve(h int) []Move {
	var moves []Move
	for s.over(h, s.p.Target) {
		v, d := s.pickRelief(h)
		if v < 0 {
			break
		}
		moves = append(moves, s.move(v, d))
	}
	return moves
}

// pickRelief chooses the VM to move off h and its destination: the
// smallest VM whose departure alone brings h within the Target, else the
// largest VM; only VMs that some host takes count.
func (s *state) pickRelief(h int) (vm, dest int) {
	c := s.hosts[h].Capacity
	excess := Resources{CPU: s.load[h].CPU - s.p.Target*c.CPU, Mem: s.load[h].Mem - int64(s.p.Target*float64(c.Mem))}
	vs := s.on(h)
	s.bySizeDesc(vs)
	largest, largestDest := -1, -1
	vm, dest = -1, -1
	for _, v := range vs {
		d := s.reliefDest(v)
		if d < 0 {
			continue
		}
		if largest < 0 {
			largest, largestDest = v, d
		}
		u := s.vms[v].Use
		if u.CPU+eps >= excess.CPU && u.Mem >= excess.Mem {
			vm, dest = v, d // keep going: a smaller one may suffice too
		}
	}
	if vm < 0 {
		return largest, largestDest
	}
	return vm, dest
}

// reliefDest is where VM v goes when its host is overloaded: the roomiest
// host in use that takes it (a tight one would be the next to cross High
// as load keeps rising), else an empty one, or -1.
func (s *state) reliefDest(v int) int {
	if d := s.worstFit(v, func(d int) bool { return s.count[d] > 0 }); d >= 0 {
		return d
	}
	return s.bestFit(v, func(int) bool { return true })
}

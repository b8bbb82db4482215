package placement

// setWaves numbers the ordered moves (from the placement s) into waves
// that can run concurrently. A move joins the current wave if its
// destination, counting every VM arriving in the wave while the VMs
// leaving still hold their place (a migration occupies both hosts until
// it ends), stays within the Target and holds no other VM of its
// anti-affinity group; otherwise the wave ends and the move starts the
// next one, from the placement the previous waves leave, where the order
// already made it valid.
func (s *state) setWaves(moves []Move) {
	w := s.clone()
	var wave []int // VM indexes moving in the current wave
	n := 0
	for i, m := range moves {
		v, to := w.vmIndex(m.VM), w.hostIdx[m.To]
		if len(wave) > 0 && !w.joins(v, to, wave, moves[i-len(wave):i]) {
			for j, u := range wave {
				w.unplace(u)
				w.place(u, w.hostIdx[moves[i-len(wave)+j].To])
			}
			wave = wave[:0]
			n++
		}
		wave = append(wave, v)
		moves[i].Wave = n
	}
}

// joins reports whether VM v can go to host to alongside the wave's
// moves, none of them done yet.
func (s *state) joins(v, to int, wave []int, ms []Move) bool {
	extra := s.vms[v].Use
	g := s.vms[v].AntiAffinity
	for j, u := range wave {
		if s.hostIdx[ms[j].To] != to {
			continue
		}
		extra.CPU += s.vms[u].Use.CPU
		extra.Mem += s.vms[u].Use.Mem
		if g != "" && s.vms[u].AntiAffinity == g {
			return false
		}
	}
	if g != "" && s.groups[to][g] > 0 {
		return false
	}
	return s.fits(to, extra, s.p.Target)
}

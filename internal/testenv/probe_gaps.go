package testenv

import "time"

// Gaps are addr's gaps that ended in [from, to], oldest first.
func (p *Prober) Gaps(addr string, from, to time.Time) []ProbeGap {
	p.mu.Lock()
	defer p.mu.Unlock()
	var gs []ProbeGap
	for _, x := range p.gaps[addr] {
		if !x.To.Before(from) && !x.To.After(to) {
			gs = append(gs, x)
		}
	}
	return gs
}

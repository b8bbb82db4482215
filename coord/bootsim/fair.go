package bootsim

import "math"

// flow is data moving at a rate up to cap, through up to two NICs (-1:
// none: a disk or a host's own cache).
type flow struct {
	cap  float64
	nics [2]int
	rate float64
}

// share gives the flows max-min fair rates (progressive filling): every
// flow's rate grows together until it reaches its cap or one of its NICs
// is full, then the others go on.
func share(flows []flow, nic float64, hosts int) {
	rem := make([]float64, hosts)
	users := make([]int, hosts)
	for i := range rem {
		rem[i] = nic
	}
	active := make([]int, 0, len(flows))
	for i := range flows {
		flows[i].rate = 0
		if flows[i].cap > 0 {
			active = append(active, i)
			for _, n := range flows[i].nics {
				if n >= 0 {
					users[n]++
				}
			}
		}
	}
	const eps = 1e-9
	for len(active) > 0 {
		inc := math.Inf(1)
		for n, u := range users {
			if u > 0 {
				inc = min(inc, rem[n]/float64(u))
			}
		}
		for _, i := range active {
			inc = min(inc, flows[i].cap-flows[i].rate)
		}
		next := active[:0]
		for _, i := range active {
			f := &flows[i]
			f.rate += inc
			for _, n := range f.nics {
				if n >= 0 {
					rem[n] -= inc
				}
			}
		}
		for _, i := range active {
			f := &flows[i]
			full := f.cap-f.rate <= eps*f.cap
			for _, n := range f.nics {
				full = full || n >= 0 && rem[n] <= eps*nic
			}
			if !full {
				next = append(next, i)
				continue
			}
			for _, n := range f.nics {
				if n >= 0 {
					users[n]--
				}
			}
		}
		active = next
	}
}

package placement

import (
	"cmp"
	"fmt"
	"slices"
)

// eps absorbs float rounding in capacity comparisons: loads are summed
// and subtracted in different orders.
const eps = 1e-9

// state is a placement being edited: VMs and hosts sorted by name and
// referred to by index, with per-host loads kept current.
type state struct {
	p       Policy
	hosts   []Host
	vms     []VM
	hostIdx map[string]int
	loc     []int            // VM index -> host index
	load    []Resources      // host index -> summed use
	count   []int            // host index -> VMs on it
	groups  []map[string]int // host index -> anti-affinity group -> VMs
	maxCap  Resources        // for sizing VMs on one scale
}

// newState validates the input and builds the sorted state.
func newState(hosts []Host, vms []VM, p Policy) (*state, error) {
	if !(p.Target > 0 && p.Target <= 1) {
		return nil, fmt.Errorf("%w: policy target %v is not in (0, 1]", ErrInvalid, p.Target)
	}
	s := &state{p: p, hosts: slices.Clone(hosts), vms: slices.Clone(vms), hostIdx: map[string]int{}}
	slices.SortFunc(s.hosts, func(a, b Host) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(s.vms, func(a, b VM) int { return cmp.Compare(a.Name, b.Name) })
	for i, h := range s.hosts {
		if _, dup := s.hostIdx[h.Name]; dup {
			return nil, fmt.Errorf("%w: host %q listed twice", ErrInvalid, h.Name)
		}
		if h.Capacity.CPU <= 0 || h.Capacity.Mem <= 0 {
			return nil, fmt.Errorf("%w: host %q has no capacity", ErrInvalid, h.Name)
		}
		s.hostIdx[h.Name] = i
		s.maxCap.CPU = max(s.maxCap.CPU, h.Capacity.CPU)
		s.maxCap.Mem = max(s.maxCap.Mem, h.Capacity.Mem)
	}
	n := len(s.hosts)
	s.loc, s.load, s.count = make([]int, len(s.vms)), make([]Resources, n), make([]int, n)
	s.groups = make([]map[string]int, n)
	for i := range s.groups {
		s.groups[i] = map[string]int{}
	}
	for i, v := range s.vms {
		if i > 0 && s.vms[i-1].Name == v.Name {
			return nil, fmt.Errorf("%w: VM %q listed twice", ErrInvalid, v.Name)
		}
		h, ok := s.hostIdx[v.Host]
		if !ok {
			return nil, fmt.Errorf("%w: VM %q is on unknown host %q", ErrInvalid, v.Name, v.Host)
		}
		s.loc[i] = -1
		s.place(i, h)
	}
	return s, nil
}

// place puts VM v on host h with no check (v must be on no host, loc -1).
func (s *state) place(v, h int) {
	s.loc[v] = h
	u := s.vms[v].Use
	s.load[h].CPU += u.CPU
	s.load[h].Mem += u.Mem
	s.count[h]++
	if g := s.vms[v].AntiAffinity; g != "" {
		s.groups[h][g]++
	}
}

// unplace takes VM v off its host.
func (s *state) unplace(v int) {
	h := s.loc[v]
	u := s.vms[v].Use
	s.load[h].CPU -= u.CPU
	s.load[h].Mem -= u.Mem
	s.count[h]--
	if g := s.vms[v].AntiAffinity; g != "" {
		s.groups[h][g]--
	}
	s.loc[v] = -1
}

// move relocates VM v to host h and returns the Move.
func (s *state) move(v, h int) Move {
	m := Move{VM: s.vms[v].Name, Job: s.vms[v].Job, From: s.hosts[s.loc[v]].Name, To: s.hosts[h].Name}
	s.unplace(v)
	s.place(v, h)
	return m
}

// clone copies the mutable parts; the inputs are shared read-only.
func (s *state) clone() *state {
	c := *s
	c.loc, c.load, c.count = slices.Clone(s.loc), slices.Clone(s.load), slices.Clone(s.count)
	c.groups = make([]map[string]int, len(s.groups))
	for i, g := range s.groups {
		c.groups[i] = make(map[string]int, len(g))
		for k, n := range g {
			c.groups[i][k] = n
		}
	}
	return &c
}

// fits reports whether host h's load plus extra stays within frac of its
// capacity on CPU and memory.
func (s *state) fits(h int, extra Resources, frac float64) bool {
	c := s.hosts[h].Capacity
	return s.load[h].CPU+extra.CPU <= frac*c.CPU+eps &&
		float64(s.load[h].Mem+extra.Mem) <= frac*float64(c.Mem)+eps*float64(c.Mem)
}

// over reports whether host h is above frac of its capacity.
func (s *state) over(h int, frac float64) bool { return !s.fits(h, Resources{}, frac) }

// allowed reports whether VM v may go to host h by its labels and the
// host's state, leaving capacity and anti-affinity aside.
func (s *state) allowed(v, h int) bool {
	if s.vms[v].Pinned || s.hosts[h].Drained {
		return false
	}
	for k, want := range s.vms[v].Affinity {
		if got, ok := s.hosts[h].Labels[k]; !ok || got != want {
			return false
		}
	}
	return true
}

// canReceive reports whether VM v may move to host h now: allowed, no VM
// of its anti-affinity group there, and within the Target.
func (s *state) canReceive(v, h int) bool {
	if h == s.loc[v] || !s.allowed(v, h) {
		return false
	}
	if g := s.vms[v].AntiAffinity; g != "" && s.groups[h][g] > 0 {
		return false
	}
	return s.fits(h, s.vms[v].Use, s.p.Target)
}

// slack is host h's smallest spare fraction (CPU or memory) under the
// Target after adding extra.
func (s *state) slack(h int, extra Resources) float64 {
	c := s.hosts[h].Capacity
	cpu := (s.p.Target*c.CPU - s.load[h].CPU - extra.CPU) / c.CPU
	mem := (s.p.Target*float64(c.Mem) - float64(s.load[h].Mem+extra.Mem)) / float64(c.Mem)
	return min(cpu, mem)
}

// bestFit is the host among those ok accepts that VM v can move to and
// that it leaves tightest (best fit), or -1.
func (s *state) bestFit(v int, ok func(h int) bool) int { return s.fit(v, ok, -1) }

// worstFit is the one it leaves roomiest.
func (s *state) worstFit(v int, ok func(h int) bool) int { return s.fit(v, ok, 1) }

// fit picks among the hosts ok accepts that VM v can move to the one
// with the least (sign -1) or most (sign 1) slack after the move; the
// first by name on ties.
func (s *state) fit(v int, ok func(h int) bool, sign float64) int {
	best, bestSlack := -1, 0.0
	for h := range s.hosts {
		if !ok(h) || !s.canReceive(v, h) {
			continue
		}
		if sl := sign * s.slack(h, s.vms[v].Use); best < 0 || sl > bestSlack {
			best, bestSlack = h, sl
		}
	}
	return best
}

// size is VM v's larger share of the biggest host (CPU or memory).
func (s *state) size(v int) float64 {
	u := s.vms[v].Use
	return max(u.CPU/s.maxCap.CPU, float64(u.Mem)/float64(s.maxCap.Mem))
}

// bySizeDesc orders VM indexes largest first, by name on ties.
func (s *state) bySizeDesc(vs []int) {
	slices.SortStableFunc(vs, func(a, b int) int {
		if c := cmp.Compare(s.size(b), s.size(a)); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
}

// on lists the VMs on host h, by name.
func (s *state) on(h int) []int {
	var vs []int
	for v, at := range s.loc {
		if at == h {
			vs = append(vs, v)
		}
	}
	return vs
}

// used counts the hosts with at least one VM.
func (s *state) used() int {
	n := 0
	for _, c := range s.count {
		if c > 0 {
			n++
		}
	}
	return n
}

// freed lists the hosts that had VMs in before and have none in s.
func (s *state) freed(before *state) []string {
	var out []string
	for h, c := range s.count {
		if c == 0 && before.count[h] > 0 {
			out = append(out, s.hosts[h].Name)
		}
	}
	return out
}

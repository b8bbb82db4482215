package bootsim

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Result is one simulated boot.
type Result struct {
	Mode string `json:"mode"`
	// Ready is when the last VM was ready; First and P50 are the first's
	// and the median VM's.
	Ready time.Duration `json:"ready_ns"`
	First time.Duration `json:"first_ns"`
	P50   time.Duration `json:"p50_ns"`
	// SeedServed is what the seed sent over its NIC, SeedDisk what it read
	// from its disk.
	SeedServed int64 `json:"seed_served_bytes"`
	SeedDisk   int64 `json:"seed_disk_bytes"`
	// CopyDone is when the last host's copy ended (Copy only).
	CopyDone time.Duration `json:"copy_done_ns,omitempty"`
	// Lost is how many VMs were on the killed host and never got ready
	// (not counted in the times).
	Lost  int `json:"lost,omitempty"`
	Depth int `json:"depth,omitempty"` // hops from the seed to the deepest host (Tree only)
}

type phase int

const (
	queued phase = iota
	starting
	reading
	resuming
	ready
	lost // on a host that died
)

type vm struct {
	host  int
	phase phase
	until float64 // end of the current timed phase (s)
	got   float64 // bytes of the read set read
	at    float64 // when ready (s)
}

// sim is one run's state; times are seconds, sizes bytes.
type sim struct {
	c      Config
	mode   Mode
	t, dt  float64
	target float64   // what each host ends up holding
	have   []float64 // what each host holds (the seed: read from disk)
	in     []float64 // each host's fill rate over the last step
	slots  []int     // VMs of each host started and not yet ready
	par    []int     // where each host fetches from (-1: the seed's disk)
	stall  []float64 // a re-parented host fetches nothing until then
	killed bool
	vms    []vm
	served float64
	copied float64
}

// Run simulates the boot of c.VMs VMs on c.Hosts hosts in mode m.
func Run(c Config, m Mode) (Result, error) {
	if err := c.validate(); err != nil {
		return Result{}, err
	}
	s := &sim{c: c, mode: m, dt: c.Step.Seconds(), target: float64(c.Read),
		have: make([]float64, c.Hosts), in: make([]float64, c.Hosts), slots: make([]int, c.Hosts)}
	if m == Copy {
		s.target = float64(c.Image)
	}
	s.par, s.stall = make([]int, c.Hosts), make([]float64, c.Hosts)
	for h := range s.par { // Copy and Central: every host fetches from the seed
		if m == Tree || h == 0 {
			s.par[h] = Parent(h, c.Degree)
		}
	}
	for i := range c.VMs {
		s.vms = append(s.vms, vm{host: i % c.Hosts})
	}
	for left := c.VMs; left > 0; s.t += s.dt {
		if s.t > c.Limit.Seconds() {
			return Result{}, fmt.Errorf("%w: %s: %d of %d VMs not ready after %v", ErrConfig, m, left, c.VMs, c.Limit)
		}
		s.kill()
		left = s.phases()
		s.move()
	}
	return s.result(), nil
}

// kill takes the Kill host out of a tree at KillAt: its VMs are lost and
// its children fetch from its parent once they have noticed (Detect).
// The new parent's index is below the child's, as before.
func (s *sim) kill() {
	if s.killed || s.mode != Tree || s.c.Kill == 0 || s.t < s.c.KillAt.Seconds() {
		return
	}
	s.killed = true
	k := s.c.Kill
	for h := range s.par {
		if s.par[h] == k {
			s.par[h], s.stall[h] = s.par[k], s.t+s.c.Detect.Seconds()
		}
	}
	s.par[k], s.stall[k] = -1, math.Inf(1)
	for i := range s.vms {
		if s.vms[i].host == k && s.vms[i].phase != ready {
			s.vms[i].phase = lost
		}
	}
}

// phases moves each VM on whose phase is over; it returns how many are
// neither ready nor lost.
func (s *sim) phases() int {
	left := 0
	for i := range s.vms {
		v := &s.vms[i]
		switch {
		case v.phase == queued && s.slots[v.host] < s.c.Parallel && s.hostReady(v.host):
			v.phase, v.until = starting, s.t+(s.c.Overlay+s.c.Start).Seconds()
			s.slots[v.host]++
		case v.phase == starting && s.t >= v.until-1e-12:
			v.phase = reading
		case v.phase == reading && v.got >= float64(s.c.Read)*(1-1e-9):
			v.phase, v.until = resuming, s.t+s.c.Resume.Seconds()
		case v.phase == resuming && s.t >= v.until-1e-12:
			v.phase, v.at = ready, v.until
			s.slots[v.host]--
		}
		if v.phase != ready && v.phase != lost {
			left++
		}
	}
	return left
}

// hostReady says whether a host's VMs may start: in Copy mode, once the
// host holds the whole image.
func (s *sim) hostReady(h int) bool {
	return s.mode != Copy || h == 0 || s.have[h] >= s.target*(1-1e-9)
}

// avail caps a flow to what its source holds beyond its destination, plus
// what the source gained over the last step.
func (s *sim) avail(cap, src, dst, srcIn float64) float64 {
	gap := max(src-dst, 0)
	if gap >= cap*s.dt {
		return cap
	}
	return min(cap, gap/s.dt+srcIn)
}

// move plans the step's flows, shares the NICs, then moves the data.
func (s *sim) move() {
	readers := s.readers()
	flows := []flow{{nics: [2]int{-1, -1}}} // flows[0]: the seed's disk
	if s.have[0] < s.target && (readers[0] > 0 || s.mode == Copy) {
		flows[0].cap = s.c.Disk
	}
	dst := []int{-1} // host (>= 0) or ^VM the flow fills
	hops := s.hops()
	for h := 1; h < s.c.Hosts; h++ {
		p := s.par[h]
		if s.have[h] >= s.target || (s.mode == Tree && readers[h] == 0) || s.mode == Central || s.t < s.stall[h] {
			continue
		}
		cap := s.c.Stream // a bulk copy keeps enough requests in flight
		if s.mode == Tree {
			cap = s.c.conn(hops[h])
		}
		flows = append(flows, flow{cap: s.avail(cap, s.have[p], s.have[h], s.in[p]), nics: [2]int{p, h}})
		dst = append(dst, h)
	}
	if s.mode == Central {
		for i, v := range s.vms {
			if v.phase == reading && v.host != 0 {
				flows = append(flows, flow{cap: s.avail(s.c.Conn(), s.have[0], v.got, s.in[0]), nics: [2]int{0, v.host}})
				dst = append(dst, ^i)
			}
		}
	}
	share(flows, s.c.NIC, s.c.Hosts)
	s.apply(flows, dst)
	s.readLocal()
}

// hops is, for each host of a tree, how many hops its reads wait for: a
// read that misses on a parent which has caught up with its own parent
// misses there too, up to the first node that is ahead (or the seed).
func (s *sim) hops() []int {
	n := make([]int, s.c.Hosts)
	for h := 1; h < s.c.Hosts && s.mode == Tree; h++ {
		p := s.par[h]
		n[h] = 1
		if p > 0 && s.have[s.par[p]]-s.have[p] < s.c.Conn()*s.dt {
			n[h] += n[p]
		}
	}
	return n
}

// readers counts the VMs reading on each host and, in a tree, below it
// (the seed: every reader, but in a tree only through its children).
func (s *sim) readers() []int {
	n := make([]int, s.c.Hosts)
	for _, v := range s.vms {
		if v.phase == reading {
			n[v.host]++
		}
	}
	for h := s.c.Hosts - 1; h > 0; h-- {
		if s.mode == Tree {
			if p := s.par[h]; p >= 0 {
				n[p] += n[h]
			}
		} else {
			n[0] += n[h] // the seed's disk serves every reader
		}
	}
	return n
}

// apply moves each flow's bytes, parents before children (a parent's
// index is below its children's), never past what the source holds.
func (s *sim) apply(flows []flow, dst []int) {
	clear(s.in)
	d := min(flows[0].rate*s.dt, s.target-s.have[0])
	s.have[0] += d
	s.in[0] = d / s.dt
	for i := 1; i < len(flows); i++ {
		if dst[i] < 0 {
			v := &s.vms[^dst[i]]
			d := min(flows[i].rate*s.dt, s.have[0]-v.got, float64(s.c.Read)-v.got)
			v.got += max(d, 0)
			s.served += max(d, 0)
			continue
		}
		h := dst[i]
		p := s.par[h]
		d := max(min(flows[i].rate*s.dt, s.have[p]-s.have[h], s.target-s.have[h]), 0)
		s.have[h] += d
		s.in[h] = d / s.dt
		if p == 0 {
			s.served += d
		}
		if s.mode == Copy && s.have[h] >= s.target*(1-1e-9) {
			s.copied = max(s.copied, s.t+s.dt)
		}
	}
}

// readLocal advances the VMs that read from their own host's copy.
func (s *sim) readLocal() {
	for i := range s.vms {
		v := &s.vms[i]
		if v.phase != reading || (s.mode == Central && v.host != 0) {
			continue
		}
		d := min(s.c.Local*s.dt, s.have[v.host]-v.got, float64(s.c.Read)-v.got)
		v.got += max(d, 0)
	}
}

func (s *sim) result() Result {
	var at []float64
	nLost := 0
	for _, v := range s.vms {
		if v.phase == lost {
			nLost++
			continue
		}
		at = append(at, v.at)
	}
	if len(at) == 0 {
		at = []float64{0}
	}
	sort.Float64s(at)
	dur := func(sec float64) time.Duration { return time.Duration(math.Round(sec * 1e9)) }
	r := Result{Mode: s.mode.String(), First: dur(at[0]), P50: dur(at[len(at)/2]), Ready: dur(at[len(at)-1]),
		SeedServed: int64(math.Round(s.served)), SeedDisk: int64(math.Round(s.have[0])), CopyDone: dur(s.copied), Lost: nLost}
	if s.mode == Tree {
		r.Depth = Depth(s.c.Hosts, s.c.Degree)
	}
	return r
}

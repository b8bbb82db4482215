package sim

import (
	"fmt"
	"slices"

	"github.com/symvirt/symvirt/coord/placement"
)

// Result is one strategy's day.
type Result struct {
	Strategy string `json:"strategy"`
	Rounds   int    `json:"rounds"`
	// Hosts in use after each round: average, fewest, most; Released is
	// the hosts left empty on average (Config.Hosts − AvgHosts).
	AvgHosts float64 `json:"avg_hosts_in_use"`
	MinHosts int     `json:"min_hosts_in_use"`
	MaxHosts int     `json:"max_hosts_in_use"`
	Released float64 `json:"avg_hosts_released"`
	// Migrations is the moves made; Changes the VMs whose host differs
	// after a round from before it. The two are equal when no VM moves
	// twice in a round, which the planners promise; Run counts both so a
	// test can hold them to it.
	Migrations int `json:"migrations"`
	Changes    int `json:"changes"`
	// OverHighHostMinutes: host-minutes whose actual load was above
	// Policy.High.
	OverHighHostMinutes float64        `json:"over_high_host_minutes"`
	Actions             map[string]int `json:"actions"`
	// Per round, for tests.
	Log []Round `json:"-"`
}

// Round is one round's outcome.
type Round struct {
	Hosts, Moves, Changes, Repeats int
	// MaxFill is the fullest host's actual load (share of its capacity)
	// after the round; SharedGroups counts anti-affinity pairs sharing a
	// host after it.
	MaxFill      float64
	SharedGroups int
}

// Run replays the trace against s. The VMs start spread round robin.
func Run(c Config, s Strategy) (Result, error) {
	if err := c.check(); err != nil {
		return Result{}, err
	}
	t := NewTrace(c)
	hosts := make([]placement.Host, c.Hosts)
	for i := range hosts {
		hosts[i] = placement.Host{Name: fmt.Sprintf("h%03d", i), Capacity: c.Capacity}
	}
	at := make([]string, c.VMs)
	for i := range at {
		at[i] = hosts[i%c.Hosts].Name
	}
	res := Result{Strategy: s.Name(), MinHosts: c.Hosts, Actions: map[string]int{}}
	minutes := c.Step.Minutes()
	for step := range c.steps() {
		actual := t.vmsAt(at, step, t.Use)
		res.OverHighHostMinutes += minutes * float64(countOver(hosts, actual, c.Policy.High))
		moves, action, err := s.Round(hosts, t.vmsAt(at, step, t.Measured))
		if err != nil {
			return res, fmt.Errorf("step %d: %s: %w", step, s.Name(), err)
		}
		if action != "" {
			res.Actions[action]++
		}
		r, next, err := apply(at, moves)
		if err != nil {
			return res, fmt.Errorf("step %d: %s: %w", step, s.Name(), err)
		}
		at = next
		r.MaxFill, r.SharedGroups = check(hosts, t.vmsAt(at, step, t.Use))
		res.record(r)
	}
	res.AvgHosts /= float64(res.Rounds)
	res.Released = float64(c.Hosts) - res.AvgHosts
	return res, nil
}

func (res *Result) record(r Round) {
	res.Rounds++
	res.Log = append(res.Log, r)
	res.Migrations += r.Moves
	res.Changes += r.Changes
	res.AvgHosts += float64(r.Hosts)
	res.MinHosts = min(res.MinHosts, r.Hosts)
	res.MaxHosts = max(res.MaxHosts, r.Hosts)
}

// vmsAt is the VMs at their hosts with usage from use.
func (t *Trace) vmsAt(at []string, step int, use func(i, s int) placement.Resources) []placement.VM {
	vms := make([]placement.VM, len(at))
	for i, h := range at {
		vms[i] = placement.VM{Name: fmt.Sprintf("vm%04d", i), Job: fmt.Sprintf("job%04d", i), Host: h,
			Use: use(i, step), AntiAffinity: t.vms[i].group}
	}
	return vms
}

// apply carries the moves out in order, refusing one that does not start
// where its VM is, and counts the hosts in use and the VMs moved.
func apply(at []string, moves []placement.Move) (Round, []string, error) {
	next := slices.Clone(at)
	moved := map[int]bool{}
	var r Round
	for _, m := range moves {
		var i int
		if _, err := fmt.Sscanf(m.VM, "vm%d", &i); err != nil || i < 0 || i >= len(next) || next[i] != m.From {
			return r, nil, fmt.Errorf("move %+v does not start where its VM is", m)
		}
		next[i] = m.To
		r.Moves++
		if moved[i] {
			r.Repeats++
		}
		moved[i] = true
	}
	inUse := map[string]bool{}
	for i, h := range next {
		inUse[h] = true
		if h != at[i] {
			r.Changes++
		}
	}
	r.Hosts = len(inUse)
	return r, next, nil
}

func countOver(hosts []placement.Host, vms []placement.VM, high float64) int {
	load, n := placement.Loads(vms), 0
	for _, h := range hosts {
		if h.Fill(load[h.Name]) > high+1e-9 {
			n++
		}
	}
	return n
}

// check gives the fullest host's fill and the anti-affinity groups that
// share a host.
func check(hosts []placement.Host, vms []placement.VM) (maxFill float64, shared int) {
	load := placement.Loads(vms)
	for _, h := range hosts {
		maxFill = max(maxFill, h.Fill(load[h.Name]))
	}
	seen := map[[2]string]bool{}
	for _, v := range vms {
		if k := [2]string{v.AntiAffinity, v.Host}; v.AntiAffinity != "" {
			shared += btoi(seen[k])
			seen[k] = true
		}
	}
	return maxFill, shared
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

package placement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func cpuHost(name string, cpu float64) Host {
	return Host{Name: name, Capacity: Resources{CPU: cpu, Mem: 64 * gib}}
}

func cpuVM(name, host string, cpu float64) VM {
	return VM{Name: name, Job: "j", Host: host, Use: Resources{CPU: cpu, Mem: gib}}
}

// TestOrderMovesWaitsForRoom: a move into a host that is not yet free
// enough comes after the move that frees it, whatever the names say.
func TestOrderMovesWaitsForRoom(t *testing.T) {
	hosts := []Host{cpuHost("h1", 4), cpuHost("h2", 4), cpuHost("h3", 4)}
	vms := []VM{cpuVM("a", "h2", 2.5), cpuVM("b", "h1", 2), cpuVM("c", "h3", 0.5)}
	s, err := newState(hosts, vms, Policy{Target: 0.8})
	if err != nil {
		t.Fatal(err)
	}
	moves, ok := s.orderMoves([]int{0, 2, 2}) // a -> h1, b -> h3, c stays
	if !ok || len(moves) != 2 || moves[0].VM != "b" || moves[1].VM != "a" {
		t.Fatalf("moves %+v ok %v, want b then a", moves, ok)
	}
}

// TestOrderMovesBreaksCycle: two VMs swapping hosts that cannot take
// both at once within the Target: one move fills its destination past
// the Target (within capacity) for the while; if even capacity does not
// allow it there is no order (a VM never goes through a third host).
func TestOrderMovesBreaksCycle(t *testing.T) {
	three := []Host{cpuHost("h1", 4), cpuHost("h2", 4), cpuHost("h3", 4)}
	cases := []struct {
		hosts []Host
		a, b  float64
		want  []string
	}{
		{three, 1, 2.5, []string{"a h1>h2", "b h2>h1"}},
		{three, 2.5, 2.5, nil},
		{three[:2], 2.5, 2.5, nil},
	}
	for _, c := range cases {
		s, err := newState(c.hosts, []VM{cpuVM("a", "h1", c.a), cpuVM("b", "h2", c.b)}, Policy{Target: 0.8})
		if err != nil {
			t.Fatal(err)
		}
		moves, ok := s.orderMoves([]int{1, 0})
		if ok != (c.want != nil) || !slices.Equal(brief(moves), c.want) {
			t.Errorf("%d hosts, a %v, b %v: moves %v ok %v, want %v", len(c.hosts), c.a, c.b, brief(moves), ok, c.want)
		}
	}
}

func brief(ms []Move) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.VM+" "+m.From+">"+m.To)
	}
	return out
}

// TestInvalidInput: malformed input is ErrInvalid, for both entry points.
func TestInvalidInput(t *testing.T) {
	h := []Host{cpuHost("h1", 4)}
	cases := []struct {
		name  string
		hosts []Host
		vms   []VM
		p     Policy
	}{
		{"target 0", h, nil, Policy{High: 0.9}},
		{"target above 1", h, nil, Policy{Target: 1.5, High: 0.9}},
		{"duplicate host", append(h, h[0]), nil, Policy{Target: 0.8, High: 0.9}},
		{"host without capacity", []Host{{Name: "h0"}}, nil, Policy{Target: 0.8, High: 0.9}},
		{"duplicate VM", h, []VM{cpuVM("a", "h1", 1), cpuVM("a", "h1", 1)}, Policy{Target: 0.8, High: 0.9}},
		{"unknown host", h, []VM{cpuVM("a", "h9", 1)}, Policy{Target: 0.8, High: 0.9}},
	}
	for _, c := range cases {
		for name, f := range map[string]func([]Host, []VM, Policy) (Plan, error){"Consolidate": Consolidate, "ScaleOut": ScaleOut} {
			if _, err := f(c.hosts, c.vms, c.p); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: %s: err %v, want ErrInvalid", c.name, name, err)
			}
		}
	}
	if _, err := ScaleOut(h, nil, Policy{Target: 0.8, High: 0.7}); !errors.Is(err, ErrInvalid) {
		t.Errorf("high below target: err %v, want ErrInvalid", err)
	}
}

// TestDeterministic: the plan depends on the input's content, not its
// order.
func TestDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	p := Policy{Target: 0.8, High: 0.9}
	for range 200 {
		hosts, vms := randomInstance(r)
		a, errA := Consolidate(hosts, vms, p)
		slices.Reverse(hosts)
		slices.Reverse(vms)
		b, errB := Consolidate(hosts, vms, p)
		if fmt.Sprint(a, errA) != fmt.Sprint(b, errB) {
			t.Fatalf("plans differ with the input reversed:\n%+v\n%+v", a, b)
		}
	}
}

// TestScaleOutRandom: on random small instances loaded near their hosts'
// capacity, every ScaleOut plan replays with each destination within the
// Target, satisfies the placement constraints, and lists as Overloaded
// exactly the hosts still above High.
func TestScaleOutRandom(t *testing.T) {
	p := Policy{Target: 0.7, High: 0.85}
	r := rand.New(rand.NewPCG(21, 2))
	relieved, total := 0, 0
	for i := range 3000 {
		hosts, vms := randomInstance(r)
		plan, err := ScaleOut(hosts, vms, p)
		if errors.Is(err, ErrInfeasible) {
			continue
		}
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
		end, past, err := replay(hosts, vms, plan.Moves, p)
		if err == nil && past > 0 {
			err = fmt.Errorf("%d moves past the target", past)
		}
		if err == nil {
			err = valid(hosts, vms, end, p)
		}
		if err == nil {
			_, err = checkWaves(hosts, vms, plan.Moves)
		}
		if err != nil {
			t.Fatalf("instance %d: %v\nplan %+v\n%s", i, err, plan, dump(hosts, vms))
		}
		before, after := loads(vms, initial(vms)), loads(vms, end)
		for _, h := range hosts {
			over := !within(h, after[h.Name], p.High)
			if over != slices.Contains(plan.Overloaded, h.Name) {
				t.Fatalf("instance %d: host %s over high %v, Overloaded %v", i, h.Name, over, plan.Overloaded)
			}
			if !within(h, before[h.Name], p.High) {
				total++
				relieved += btoi(!over)
			}
		}
	}
	t.Logf("hosts above high relieved: %d of %d", relieved, total)
}

// largeInstance is n hosts of 32 CPUs and 128 GiB with m VMs spread
// round robin, each using 0.1 to 2 CPUs and 0.5 to 8 GiB, some in
// anti-affinity groups of 3.
func largeInstance(n, m int, seed uint64) ([]Host, []VM) {
	r := rand.New(rand.NewPCG(seed, 0))
	var hosts []Host
	for i := range n {
		hosts = append(hosts, Host{Name: fmt.Sprintf("h%03d", i), Capacity: Resources{CPU: 32, Mem: 128 * gib}})
	}
	var vms []VM
	for i := range m {
		v := VM{Name: fmt.Sprintf("v%04d", i), Job: fmt.Sprintf("j%d", i/3), Host: hosts[i%n].Name,
			Use: Resources{CPU: 0.1 + 1.9*r.Float64(), Mem: int64((0.5 + 7.5*r.Float64()) * gib)}}
		if i%10 < 3 {
			v.AntiAffinity = v.Job
		}
		vms = append(vms, v)
	}
	return hosts, vms
}

// TestConsolidateLarge: 1,000 VMs on 100 hosts plan (greedily) into a
// valid, replayable plan that frees hosts; the time taken is logged, not
// asserted.
func TestConsolidateLarge(t *testing.T) {
	hosts, vms := largeInstance(100, 1000, 1)
	p := Policy{Target: 0.8, High: 0.9}
	start := time.Now()
	plan, err := Consolidate(hosts, vms, p)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	end, past, err := replay(hosts, vms, plan.Moves, p)
	if err == nil {
		err = valid(hosts, vms, end, p)
	}
	waves := 0
	if err == nil {
		waves, err = checkWaves(hosts, vms, plan.Moves)
	}
	if err != nil || past > 0 {
		t.Fatalf("%v (%d moves past the target)", err, past)
	}
	if len(plan.Freed) == 0 {
		t.Fatal("no host freed")
	}
	t.Logf("1000 VMs / 100 hosts: %d hosts in use, %d freed, %d moves in %d waves, planned in %v", usedHosts(end), len(plan.Freed), len(plan.Moves), waves, took)
}

func BenchmarkConsolidate1000(b *testing.B) {
	hosts, vms := largeInstance(100, 1000, 1)
	for b.Loop() {
		if _, err := Consolidate(hosts, vms, Policy{Target: 0.8, High: 0.9}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestScaleOutLarge: 1,000 VMs crowded on 30 of 100 hosts (most of them
// above High) are relieved onto the others: every host ends within High,
// the plan replays within the Target at every step and by waves.
func TestScaleOutLarge(t *testing.T) {
	hosts, vms := largeInstance(100, 1000, 2)
	for i := range vms {
		vms[i].Host = hosts[i%30].Name
		vms[i].AntiAffinity = ""
	}
	p := Policy{Target: 0.8, High: 0.9}
	over := 0
	for _, h := range hosts {
		over += btoi(!within(h, loads(vms, initial(vms))[h.Name], p.High))
	}
	plan, err := ScaleOut(hosts, vms, p)
	if err != nil {
		t.Fatal(err)
	}
	end, past, err := replay(hosts, vms, plan.Moves, p)
	if err == nil {
		_, err = checkWaves(hosts, vms, plan.Moves)
	}
	if err != nil || past > 0 || len(plan.Overloaded) > 0 || over == 0 {
		t.Fatalf("%v; %d moves past the target; overloaded %v; %d hosts above high before", err, past, plan.Overloaded, over)
	}
	t.Logf("%d hosts above high relieved with %d moves; %d hosts in use", over, len(plan.Moves), usedHosts(end))
}

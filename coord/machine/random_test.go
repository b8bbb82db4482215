package machine

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// simVM is what the simulated hosts know of one VM.
type simVM struct {
	copies   map[string]string // host -> "running" | "paused"
	attached map[string]bool   // host -> passthrough devices plugged into that copy
	inRound  bool              // the guest is in a cooperation round
	artifact bool              // checkpoint artifacts exist
}

// world simulates the hosts behind the driver, with hostd's side of the
// contract: de-duplication by ActionID and per-host fencing (once a closing
// action of the op ran on a host for a VM, that op's forward actions there
// are refused), so stale actions executed late do no harm.
type world struct {
	t     testing.TB
	rng   *rand.Rand
	pFail float64
	vms   map[string]*simVM
	dead  map[string]bool
	done  map[ActionID]ActionResult
	fence map[string]bool
}

func newWorld(t testing.TB, rng *rand.Rand, kind Kind, vms []VM, pFail float64) *world {
	w := &world{t: t, rng: rng, pFail: pFail, vms: map[string]*simVM{}, dead: map[string]bool{},
		done: map[ActionID]ActionResult{}, fence: map[string]bool{}}
	for _, vm := range vms {
		s := &simVM{copies: map[string]string{}, attached: map[string]bool{}}
		if kind == KindRestart {
			s.artifact = true
		} else {
			s.copies[vm.Host] = "running"
			s.attached[vm.Host] = true
		}
		w.vms[vm.Name] = s
	}
	return w
}

func (w *world) crash(host string) {
	w.dead[host] = true
	for _, s := range w.vms {
		delete(s.copies, host)
		delete(s.attached, host)
	}
}

// exec runs a on its host once; repeats return the first result.
func (w *world) exec(a Action, now time.Time) ActionResult {
	if r, ok := w.done[a.ID]; ok {
		r.Now = now
		return r
	}
	r := w.run(a)
	r.ID = a.ID
	w.done[a.ID] = r
	r.Now = now
	return r
}

func (w *world) run(a Action) ActionResult {
	fail := func(why string) ActionResult { return ActionResult{Reason: why} }
	if a.Type == RecordCheckpoint {
		if w.rng.Float64() < w.pFail {
			return fail("catalog error")
		}
		return ActionResult{OK: true}
	}
	s := w.vms[a.VM]
	key := a.Host + "/" + a.VM
	if a.Type.forward() && (w.fence[key] || (a.Type == Migrate && w.fence[a.Dest+"/"+a.VM])) {
		return fail("fenced: the op was rolled back here")
	}
	if !a.Type.forward() {
		w.fence[key] = true
	}
	// Failure injection: before the effect, or after it (partial).
	roll := w.rng.Float64()
	if roll < w.pFail/2 {
		return fail("injected failure")
	}
	_, exists := s.copies[a.Host]
	need := func() bool { return exists }
	switch a.Type {
	case Prepare:
		if !need() {
			return fail("no such vm")
		}
		s.inRound = true
	case Abort:
		s.inRound = false
	case Detach:
		if !need() {
			return fail("no such vm")
		}
		s.attached[a.Host] = false
	case Stop:
		if !need() {
			return fail("no such vm")
		}
		s.copies[a.Host] = "paused"
	case Save:
		if s.copies[a.Host] != "paused" {
			w.t.Fatalf("save of %s at %s: copy is %q", a.VM, a.Host, s.copies[a.Host])
		}
		s.artifact = true
	case DeleteArtifacts:
		s.artifact = false
	case Migrate:
		if !need() {
			return fail("no such vm")
		}
		if w.dead[a.Dest] {
			return fail("destination unreachable")
		}
		s.copies[a.Dest] = "paused"
		s.attached[a.Dest] = false
		s.copies[a.Host] = "paused"
	case CancelMigrate:
		if s.copies[a.Host] == "running" {
			w.t.Fatalf("cancel-migrate of %s at %s: it runs there", a.VM, a.Host)
		}
		delete(s.copies, a.Host)
		delete(s.attached, a.Host)
	case Restore:
		s.copies[a.Host] = "paused"
		s.attached[a.Host] = false
	case Kill:
		delete(s.copies, a.Host)
		delete(s.attached, a.Host)
	case Attach:
		if !need() {
			return fail("no such vm")
		}
		s.attached[a.Host] = true
	case Resume:
		if !need() {
			return fail("no such vm")
		}
		s.copies[a.Host] = "running"
		s.inRound = false
		var running []string
		for h, st := range s.copies {
			if st == "running" && !w.dead[h] {
				running = append(running, h)
			}
		}
		if len(running) > 1 {
			w.t.Fatalf("vm %s runs on %v", a.VM, running)
		}
	}
	if roll < w.pFail {
		return fail("injected failure after the effect")
	}
	r := ActionResult{OK: true}
	if a.Type == Save {
		r.Digest = "sha256:" + a.VM
	}
	return r
}

// check compares the world with the operation's report.
func (w *world) check(o *Op) {
	t := w.t
	t.Helper()
	for i := range o.VMs {
		v := &o.VMs[i]
		s := w.vms[v.Name]
		if v.Lost || v.Outcome == OutcomeStranded || w.dead[v.At] {
			continue // (a host that crashed after the end was never reported)
		}
		var running, paused []string
		for h, st := range s.copies {
			if w.dead[h] {
				continue
			}
			if st == "running" {
				running = append(running, h)
			} else {
				paused = append(paused, h)
			}
		}
		slices.Sort(running)
		slices.Sort(paused)
		if o.Kind == KindRestart && v.Outcome == OutcomeAborted {
			if len(running)+len(paused) != 0 {
				t.Fatalf("aborted restart left %s running %v paused %v", v.Name, running, paused)
			}
			continue
		}
		if len(running) != 1 || running[0] != v.At {
			t.Fatalf("vm %s (%s, at %s) runs on %v, paused on %v\n%s", v.Name, v.Outcome, v.At, running, paused, dump(o))
		}
		if len(paused) > 0 && !strings.Contains(v.Error, "kill") && !strings.Contains(v.Error, "cancel") {
			t.Fatalf("vm %s: stray paused copies on %v", v.Name, paused)
		}
		if !s.attached[v.At] && !strings.Contains(v.Error, "attach") {
			t.Fatalf("vm %s: devices not attached at %s", v.Name, v.At)
		}
		if s.inRound {
			t.Fatalf("vm %s: guest left in its round", v.Name)
		}
		if o.Kind == KindCheckpoint {
			if o.Committed && !s.artifact {
				t.Fatalf("vm %s: complete checkpoint without artifacts", v.Name)
			}
			if !o.Committed && s.artifact && !strings.Contains(v.Error, "delete") {
				t.Fatalf("vm %s: failed checkpoint left artifacts", v.Name)
			}
		}
	}
}

func randomOp(rng *rand.Rand) (Kind, []VM, Options) {
	kinds := []Kind{KindCheckpoint, KindRestart, KindMigrate, KindEvacuate}
	kind := kinds[rng.IntN(len(kinds))]
	nh := 1 + rng.IntN(4)
	host := func() string { return fmt.Sprintf("h%d", 1+rng.IntN(nh+2)) }
	n := 1 + rng.IntN(6)
	vms := make([]VM, n)
	for i := range vms {
		vms[i] = VM{Name: fmt.Sprintf("vm%d", i), Host: fmt.Sprintf("h%d", 1+rng.IntN(nh))}
		switch kind {
		case KindRestart:
			if rng.IntN(3) == 0 {
				vms[i].Dest = host()
			}
		case KindMigrate, KindEvacuate:
			if rng.IntN(3) > 0 || i == 0 {
				for vms[i].Dest == "" || vms[i].Dest == vms[i].Host {
					vms[i].Dest = host()
				}
			}
		}
	}
	opts := Options{CheckpointID: "ck", PrepareTimeout: 10 * time.Second, StepTimeout: 5 * time.Second,
		TransferTimeout: 20 * time.Second, MaxAttempts: 1 + rng.IntN(3)}
	if (kind == KindMigrate || kind == KindEvacuate) && rng.IntN(2) == 0 {
		opts.Live = true
	}
	return kind, vms, opts
}

// TestRandomized drives many operations through random answer orders,
// failures (before and after their effect), lost answers, duplicates,
// host crashes (reported late), cancels and coordinator restarts; checks
// the invariants after every step and the simulated hosts at the end, then
// executes every action still in flight (stale) and checks them again.
func TestRandomized(t *testing.T) {
	rounds := 1500
	if testing.Short() || raceEnabled {
		rounds = 300
	}
	stats := map[string]int{}
	for round := 0; round < rounds; round++ {
		seed := uint64(round)
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		kind, vms, opts := randomOp(rng)
		pFail := []float64{0, 0.02, 0.1, 0.3}[rng.IntN(4)]
		pLose := []float64{0, 0.02, 0.1}[rng.IntN(3)]
		pCrash := []float64{0, 0.01, 0.05}[rng.IntN(3)]
		w := newWorld(t, rng, kind, vms, pFail)
		h := start(t, kind, vms, opts)
		var answers []ActionResult
		type report struct {
			host string
			at   int
		}
		var reports []report
		var hosts []string
		for _, vm := range vms {
			for _, x := range []string{vm.Host, vm.Dest} {
				if x != "" && !slices.Contains(hosts, x) {
					hosts = append(hosts, x)
				}
			}
		}
		desc := func() string {
			return fmt.Sprintf("round %d: %s %+v %+v pFail %v pLose %v pCrash %v", round, kind, vms, opts, pFail, pLose, pCrash)
		}
		for n := 0; !h.op.Done(); n++ {
			if n > 20000 {
				t.Fatalf("%s: no end in sight\n%s", desc(), dump(h.op))
			}
			if len(reports) > 0 && reports[0].at <= n {
				h.hostDown(reports[0].host)
				reports = reports[1:]
				continue
			}
			r := rng.Float64()
			switch {
			case r < pCrash:
				x := hosts[rng.IntN(len(hosts))]
				if !w.dead[x] {
					w.crash(x)
					reports = append(reports, report{x, n + rng.IntN(8)})
				}
			case r < pCrash+0.03 && len(answers) > 0:
				h.step(answers[rng.IntN(len(answers))]) // duplicate
			case r < pCrash+0.04:
				stats["reloads"]++
				b, err := json.Marshal(h.op)
				if err != nil {
					t.Fatal(err)
				}
				var o Op
				if err := json.Unmarshal(b, &o); err != nil {
					t.Fatal(err)
				}
				h.op = &o
				h.after(o.Recover(h.now))
			case r < pCrash+0.045:
				h.step(Cancel{Reason: "random", Now: h.now})
			case len(h.inflight) > 0 && r < 0.93:
				i := rng.IntN(len(h.inflight))
				a := h.inflight[i]
				h.inflight = slices.Delete(h.inflight, i, i+1)
				if a.Host != "" && w.dead[a.Host] {
					if rng.IntN(2) == 0 {
						h.step(ActionResult{ID: a.ID, Reason: "unreachable", Now: h.now})
					}
					continue
				}
				res := w.exec(a, h.now)
				if rng.Float64() < pLose {
					continue // executed, answer lost: the deadline will fail it
				}
				answers = append(answers, res)
				h.step(res)
			default:
				if len(h.inflight) == 0 || rng.IntN(4) == 0 {
					if h.op.Deadline.IsZero() {
						t.Fatalf("%s: stuck\n%s", desc(), dump(h.op))
					}
					if h.op.Deadline.After(h.now) {
						h.now = h.op.Deadline
					}
					h.step(Tick{Now: h.now})
				} else {
					h.tick(time.Duration(rng.Int64N(int64(3 * time.Second))))
				}
			}
		}
		w.check(h.op)
		// Stale actions executed after the end must change nothing.
		rng.Shuffle(len(h.inflight), func(i, j int) { h.inflight[i], h.inflight[j] = h.inflight[j], h.inflight[i] })
		for _, a := range h.inflight {
			if a.Host == "" || !w.dead[a.Host] {
				h.step(w.exec(a, h.now))
			}
		}
		w.check(h.op)
		r := h.op.Result()
		stats[string(kind)+" "+r.Outcome]++
		for _, v := range r.VMs {
			switch {
			case v.Outcome == OutcomeLost, v.Outcome == OutcomeStranded:
				stats["vm "+v.Outcome]++
			case strings.Contains(v.Error, "continued at the destination"):
				stats["vm salvaged"]++
			case strings.Contains(v.Error, "resumed at the source"):
				stats["vm reverted after commit"]++
			}
		}
		if r.Ignored > 0 {
			stats["rounds with ignored results"]++
		}
		if t.Failed() {
			t.Fatalf("%s", desc())
		}
	}
	t.Logf("%d rounds: %v", rounds, stats)
}

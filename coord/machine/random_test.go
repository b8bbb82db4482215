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
	fenced   bool              // cut off the network (live checkpoint)
	stream   string            // live save: "", "armed", "streaming", "saved"
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
	// release: the op releases VMs a vanished coordinator left, whose
	// destination may run them already.
	release bool
}

// runsThere is a CancelMigrate's refusal at a destination that runs the VM.
const runsThere = "the vm runs here"

func newWorld(t testing.TB, rng *rand.Rand, kind Kind, vms []VM, pFail float64) *world {
	w := &world{t: t, rng: rng, pFail: pFail, vms: map[string]*simVM{}, dead: map[string]bool{},
		done: map[ActionID]ActionResult{}, fence: map[string]bool{}}
	for _, vm := range vms {
		s := &simVM{copies: map[string]string{}, attached: map[string]bool{}}
		switch kind {
		case KindRestart:
			s.artifact = true
		case KindRelease:
			w.release = true
			w.left(vm, s)
		default:
			s.copies[vm.Host] = "running"
			s.attached[vm.Host] = true
		}
		w.vms[vm.Name] = s
	}
	return w
}

// left: what a vanished coordinator may have left of vm for a release
// (held at Host, an incoming copy there, or a migration whose destination
// holds a paused or running copy).
func (w *world) left(vm VM, s *simVM) {
	s.copies[vm.Host] = []string{"running", "paused"}[w.rng.IntN(2)]
	if vm.Incoming {
		s.copies[vm.Host] = "paused"
		return
	}
	s.inRound, s.fenced = true, w.rng.IntN(2) == 0
	if vm.Dest != "" {
		s.copies[vm.Host], s.copies[vm.Dest], s.fenced = "paused", "paused", false
		if w.rng.IntN(2) == 0 {
			s.copies[vm.Dest], s.attached[vm.Dest], s.inRound = "running", true, false
		}
	}
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
	if a.Type.forward() && (w.fence[key] || ((a.Type == Migrate || a.Type == Launch) && w.fence[a.Dest+"/"+a.VM])) {
		return fail("fenced: the op was rolled back here")
	}
	if !a.Type.forward() && a.Type != WaitSave {
		w.fence[key] = true
	}
	// Failure injection: before the effect, or after it (partial).
	roll := w.rng.Float64()
	if roll < w.pFail/2 {
		return fail("injected failure")
	}
	if why := w.effect(a, s); why != "" {
		r := fail(why)
		r.Running = why == runsThere
		return r
	}
	if roll < w.pFail {
		return fail("injected failure after the effect")
	}
	r := ActionResult{OK: true}
	switch a.Type {
	case Save, WaitSave:
		r.Digest = "sha256:" + a.VM
	}
	return r
}

// effect applies a to the simulated hosts; it returns why a failed, if
// it did.
func (w *world) effect(a Action, s *simVM) string {
	_, exists := s.copies[a.Host]
	if !exists {
		switch a.Type {
		case Prepare, Detach, Stop, Migrate, Launch, Attach, Resume, Arm, Fence, Point, Replace:
			return "no such vm"
		}
	}
	switch a.Type {
	case Prepare:
		s.inRound = true
	case Abort:
		s.inRound = false
	case Detach:
		s.attached[a.Host] = false
	case Stop:
		s.copies[a.Host] = "paused"
	case Save:
		if s.copies[a.Host] != "paused" {
			w.t.Fatalf("save of %s at %s: copy is %q", a.VM, a.Host, s.copies[a.Host])
		}
		s.artifact = true
	case DeleteArtifacts:
		s.artifact, s.stream = false, ""
	case Launch:
		if w.dead[a.Dest] {
			return "destination unreachable"
		}
		s.copies[a.Dest] = "empty" // an incoming QEMU without the VM's state
		s.attached[a.Dest] = false
	case Migrate:
		if w.dead[a.Dest] {
			return "destination unreachable"
		}
		s.copies[a.Dest] = "paused"
		s.attached[a.Dest] = false
		s.copies[a.Host] = "paused"
	case CancelMigrate:
		if s.copies[a.Host] == "running" {
			if !w.release {
				w.t.Fatalf("cancel-migrate of %s at %s: it runs there", a.VM, a.Host)
			}
			return runsThere
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
		s.attached[a.Host] = true
	case Resume:
		s.fenced = false
		w.resume(a, s)
	default:
		return w.liveEffect(a, s)
	}
	return ""
}

// liveEffect: the live checkpoint's and rejuvenation's steps.
func (w *world) liveEffect(a Action, s *simVM) string {
	switch a.Type {
	case Arm:
		s.attached[a.Host] = false
		s.artifact, s.stream = true, "armed"
	case Fence:
		s.fenced = true
	case Point:
		if !s.fenced || s.stream != "armed" {
			w.t.Fatalf("point of %s: fenced %v, stream %q", a.VM, s.fenced, s.stream)
		}
		s.stream = "streaming"
	case WaitSave:
		if s.stream != "streaming" || w.dead[a.Host] {
			return "no stream"
		}
		s.stream = "saved"
	case Replace:
		if s.copies[a.Host] != "paused" {
			w.t.Fatalf("replace of %s at %s: copy is %q", a.VM, a.Host, s.copies[a.Host])
		}
	}
	return ""
}

func (w *world) resume(a Action, s *simVM) {
	if s.copies[a.Host] == "empty" {
		w.t.Fatalf("resume of %s at %s: its copy there never received its state", a.VM, a.Host)
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
		if o.discards(v) && v.Outcome == OutcomeAborted {
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
		if s.fenced {
			t.Fatalf("vm %s: left fenced", v.Name)
		}
		if o.Kind == KindCheckpoint {
			if o.Checkpoint == CheckpointComplete && !s.artifact {
				t.Fatalf("vm %s: complete checkpoint without artifacts", v.Name)
			}
			if o.Checkpoint == CheckpointFailed && s.artifact && !strings.Contains(v.Error, "delete") {
				t.Fatalf("vm %s: failed checkpoint left artifacts", v.Name)
			}
			if o.Opts.Live && o.Checkpoint == CheckpointComplete && s.stream != "saved" {
				t.Fatalf("vm %s: complete live checkpoint, stream %q", v.Name, s.stream)
			}
		}
	}
}

func randomOp(rng *rand.Rand) (Kind, []VM, Options) {
	kinds := []Kind{KindCheckpoint, KindRestart, KindMigrate, KindEvacuate, KindRejuvenate, KindRelease}
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
		case KindRelease:
			switch rng.IntN(3) {
			case 0:
				vms[i].Incoming = true
			case 1:
				for vms[i].Dest == "" || vms[i].Dest == vms[i].Host {
					vms[i].Dest = host()
				}
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
	switch kind {
	case KindMigrate, KindEvacuate:
		opts.Live, opts.Freeze = rng.IntN(2) == 0, rng.IntN(3) == 0
	case KindCheckpoint:
		if opts.Live = rng.IntN(2) == 0; opts.Live {
			opts.Bandwidth = int64(rng.IntN(2)) << 20
		}
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
		randomRound(t, round, stats)
	}
	t.Logf("%d rounds: %v", rounds, stats)
}

// randomRun is one round of TestRandomized.
type randomRun struct {
	t             *testing.T
	rng           *rand.Rand
	w             *world
	h             *harness
	pLose, pCrash float64
	hosts         []string
	answers       []ActionResult
	reports       []hostReport
	stats         map[string]int
	desc          func() string
}

// hostReport: a crashed host, reported to the machine at event number at.
type hostReport struct {
	host string
	at   int
}

func randomRound(t *testing.T, round int, stats map[string]int) {
	rng := rand.New(rand.NewPCG(uint64(round), 0x5eed))
	kind, vms, opts := randomOp(rng)
	pFail := []float64{0, 0.02, 0.1, 0.3}[rng.IntN(4)]
	rr := &randomRun{t: t, rng: rng, stats: stats,
		pLose:  []float64{0, 0.02, 0.1}[rng.IntN(3)],
		pCrash: []float64{0, 0.01, 0.05}[rng.IntN(3)],
		w:      newWorld(t, rng, kind, vms, pFail), h: start(t, kind, vms, opts)}
	for _, vm := range vms {
		for _, x := range []string{vm.Host, vm.Dest} {
			if x != "" && !slices.Contains(rr.hosts, x) {
				rr.hosts = append(rr.hosts, x)
			}
		}
	}
	rr.desc = func() string {
		return fmt.Sprintf("round %d: %s %+v %+v pFail %v pLose %v pCrash %v", round, kind, vms, opts, pFail, rr.pLose, rr.pCrash)
	}
	for n := 0; !rr.h.op.Done(); n++ {
		if n > 20000 {
			t.Fatalf("%s: no end in sight\n%s", rr.desc(), dump(rr.h.op))
		}
		rr.event(n)
	}
	h, w := rr.h, rr.w
	w.check(h.op)
	// Stale actions executed after the end must change nothing.
	rng.Shuffle(len(h.inflight), func(i, j int) { h.inflight[i], h.inflight[j] = h.inflight[j], h.inflight[i] })
	for _, a := range h.inflight {
		if a.Host == "" || !w.dead[a.Host] {
			h.step(w.exec(a, h.now))
		}
	}
	w.check(h.op)
	rr.count(h.op.Result())
	if t.Failed() {
		t.Fatalf("%s", rr.desc())
	}
}

// event plays the n-th random event of the round.
func (rr *randomRun) event(n int) {
	h, w, rng := rr.h, rr.w, rr.rng
	if len(rr.reports) > 0 && rr.reports[0].at <= n {
		h.hostDown(rr.reports[0].host)
		rr.reports = rr.reports[1:]
		return
	}
	r := rng.Float64()
	switch {
	case r < rr.pCrash:
		x := rr.hosts[rng.IntN(len(rr.hosts))]
		if !w.dead[x] {
			w.crash(x)
			rr.reports = append(rr.reports, hostReport{x, n + rng.IntN(8)})
		}
	case r < rr.pCrash+0.03 && len(rr.answers) > 0:
		h.step(rr.answers[rng.IntN(len(rr.answers))]) // duplicate
	case r < rr.pCrash+0.04:
		rr.stats["reloads"]++
		b, err := json.Marshal(h.op)
		if err != nil {
			rr.t.Fatal(err)
		}
		var o Op
		if err := json.Unmarshal(b, &o); err != nil {
			rr.t.Fatal(err)
		}
		h.op = &o
		h.after(o.Recover(h.now))
	case r < rr.pCrash+0.045:
		h.step(Cancel{Reason: "random", Now: h.now})
	case len(h.inflight) > 0 && r < 0.93:
		rr.execute()
	default:
		rr.advanceClock()
	}
}

// execute runs a random in-flight action on the simulated hosts.
func (rr *randomRun) execute() {
	h := rr.h
	i := rr.rng.IntN(len(h.inflight))
	a := h.inflight[i]
	h.inflight = slices.Delete(h.inflight, i, i+1)
	if a.Host != "" && rr.w.dead[a.Host] {
		if rr.rng.IntN(2) == 0 {
			h.step(ActionResult{ID: a.ID, Reason: "unreachable", Now: h.now})
		}
		return
	}
	res := rr.w.exec(a, h.now)
	if rr.rng.Float64() < rr.pLose {
		return // executed, answer lost: the deadline will fail it
	}
	rr.answers = append(rr.answers, res)
	h.step(res)
}

func (rr *randomRun) advanceClock() {
	h := rr.h
	if len(h.inflight) > 0 && rr.rng.IntN(4) != 0 {
		h.tick(time.Duration(rr.rng.Int64N(int64(3 * time.Second))))
		return
	}
	if h.op.Deadline.IsZero() {
		rr.t.Fatalf("%s: stuck\n%s", rr.desc(), dump(h.op))
	}
	if h.op.Deadline.After(h.now) {
		h.now = h.op.Deadline
	}
	h.step(Tick{Now: h.now})
}

func (rr *randomRun) count(r Result) {
	rr.stats[string(r.Kind)+" "+r.Outcome]++
	if r.Checkpoint != "" {
		rr.stats[fmt.Sprintf("checkpoint live=%v %s", rr.h.op.Opts.Live, r.Checkpoint)]++
	}
	for _, v := range r.VMs {
		switch {
		case v.Outcome == OutcomeLost, v.Outcome == OutcomeStranded:
			rr.stats["vm "+v.Outcome]++
		case strings.Contains(v.Error, "continued at the destination"):
			rr.stats["vm salvaged"]++
		case strings.Contains(v.Error, "resumed at the source"):
			rr.stats["vm reverted after commit"]++
		case strings.Contains(v.Error, "the vm runs there"):
			rr.stats["vm found running at its destination"]++
		}
	}
	if r.Ignored > 0 {
		rr.stats["rounds with ignored results"]++
	}
}

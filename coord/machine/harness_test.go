package machine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// harness plays a scripted driver: it keeps the actions in flight, answers
// them as told, and after every step checks the invariants and that a JSON
// round trip plus Recover reproduces the outstanding actions.
type harness struct {
	t        testing.TB
	op       *Op
	now      time.Time
	log      []Action // every action emitted, in order
	inflight []Action // emitted and not answered by the harness
	steps    int
	noRound  bool // skip the per-step round trip (benchmarks)
}

func start(t testing.TB, kind Kind, vms []VM, opts Options) *harness {
	t.Helper()
	op, acts, err := New("op1", kind, "job1", vms, opts, t0)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h := &harness{t: t, op: op, now: t0}
	h.after(acts)
	return h
}

func (h *harness) after(acts []Action) {
	h.t.Helper()
	h.steps++
	h.log = append(h.log, acts...)
	h.inflight = append(h.inflight, acts...)
	checkStep(h.t, h.op, acts, h.log)
	if !h.noRound {
		checkRoundTrip(h.t, h.op)
	}
}

func (h *harness) step(ev Event) []Action {
	h.t.Helper()
	acts := h.op.Step(ev)
	h.after(acts)
	return acts
}

func (h *harness) tick(d time.Duration) []Action {
	h.t.Helper()
	h.now = h.now.Add(d)
	return h.step(Tick{Now: h.now})
}

func (h *harness) hostDown(host string) []Action {
	h.t.Helper()
	return h.step(HostDown{Host: host, Now: h.now})
}

func resultFor(a Action, ok bool, reason string, now time.Time) ActionResult {
	r := ActionResult{ID: a.ID, OK: ok, Reason: reason, Now: now}
	if ok && a.Type == Save {
		r.Digest = "sha256:" + a.VM
	}
	return r
}

// take removes and returns the in-flight action of type t for vm (the
// latest one if several).
func (h *harness) take(t ActionType, vm string) Action {
	h.t.Helper()
	for i := len(h.inflight) - 1; i >= 0; i-- {
		if a := h.inflight[i]; a.Type == t && a.VM == vm {
			h.inflight = slices.Delete(h.inflight, i, i+1)
			return a
		}
	}
	h.t.Fatalf("no %s in flight for %q; in flight: %s", t, vm, fmtActs(h.inflight))
	return Action{}
}

// answer answers the in-flight action of type t for vm.
func (h *harness) answer(t ActionType, vm string, ok bool, reason string) []Action {
	h.t.Helper()
	return h.step(resultFor(h.take(t, vm), ok, reason, h.now))
}

// answerAll answers every in-flight action of type t, in order.
func (h *harness) answerAll(t ActionType, ok bool) []Action {
	h.t.Helper()
	var out []Action
	for {
		i := slices.IndexFunc(h.inflight, func(a Action) bool { return a.Type == t })
		if i < 0 {
			return out
		}
		a := h.inflight[i]
		h.inflight = slices.Delete(h.inflight, i, i+1)
		out = append(out, h.step(resultFor(a, ok, "", h.now))...)
	}
}

// verdict is a scripted driver's decision for one action.
type verdict int

const (
	vOK   verdict = iota
	vFail         // answer with a failure
	vHold         // never answer (a deadline will fail it)
)

// run answers the actions in flight in FIFO order by policy until Done;
// when only held actions remain it ticks to the machine's deadline.
func (h *harness) run(policy func(a Action) (verdict, string)) {
	h.t.Helper()
	var held []Action
	for n := 0; !h.op.Done(); n++ {
		if n > 100000 {
			h.t.Fatalf("no end in sight")
		}
		if len(h.inflight) == 0 {
			if h.op.Deadline.IsZero() {
				h.t.Fatalf("stuck: phase %s, nothing in flight, outstanding %s", h.op.Phase, fmtActs(h.op.Outstanding()))
			}
			h.now = h.op.Deadline
			h.step(Tick{Now: h.now})
			continue
		}
		a := h.inflight[0]
		h.inflight = h.inflight[1:]
		v, reason := vOK, ""
		if policy != nil {
			v, reason = policy(a)
		}
		switch v {
		case vHold:
			held = append(held, a)
		default:
			h.step(resultFor(a, v == vOK, reason, h.now))
		}
	}
	h.inflight = append(h.inflight, held...)
}

func allOK(Action) (verdict, string) { return vOK, "" }

// vmSeq is the sequence of actions emitted for vm ("type@host(outcome)").
func (h *harness) vmSeq(vm string) []string {
	var s []string
	for _, a := range h.log {
		if a.VM == vm {
			s = append(s, fmtAct(a))
		}
	}
	return s
}

func (h *harness) count(t ActionType) int {
	n := 0
	for _, a := range h.log {
		if a.Type == t {
			n++
		}
	}
	return n
}

func fmtAct(a Action) string {
	s := string(a.Type)
	if a.Host != "" {
		s += "@" + a.Host
	}
	if a.Outcome != "" {
		s += "(" + a.Outcome + ")"
	}
	return s
}

func fmtActs(as []Action) string {
	var s []string
	for _, a := range as {
		s = append(s, a.VM+":"+fmtAct(a))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func (h *harness) wantSeq(vm string, want ...string) {
	h.t.Helper()
	if got := h.vmSeq(vm); !reflect.DeepEqual(got, want) {
		h.t.Errorf("vm %s actions:\n got %v\nwant %v", vm, got, want)
	}
}

func (h *harness) vm(name string) *VMState {
	return &h.op.VMs[h.op.index[name]]
}

// ---- invariants ----

// checkStep checks the invariants after one step; emitted are the actions
// the step returned, log all actions so far.
func checkStep(t testing.TB, o *Op, emitted, log []Action) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("invariant (phase %s): "+format, append([]any{o.Phase}, args...)...)
	}
	// Outstanding actions are well formed and accounted for.
	out := o.Outstanding()
	ids := map[ActionID]bool{}
	var min time.Time
	for _, a := range out {
		if a.ID.Op != o.ID || a.ID.Step != a.Type || a.ID.VM != a.VM {
			fail("malformed id %+v for %s", a.ID, fmtAct(a))
		}
		if ids[a.ID] {
			fail("duplicate outstanding id %v", a.ID)
		}
		ids[a.ID] = true
		if min.IsZero() || a.Deadline.Before(min) {
			min = a.Deadline
		}
	}
	if !o.Deadline.Equal(min) {
		fail("Deadline %v, earliest outstanding %v", o.Deadline, min)
	}
	if o.outstanding != len(out) {
		fail("outstanding counter %d, actual %d", o.outstanding, len(out))
	}
	for i := range o.VMs {
		v := &o.VMs[i]
		if v.Side != nil && v.Side.Type != CancelMigrate {
			fail("side action %s", v.Side.Type)
		}
		if v.Lost && v.Pending != nil {
			fail("lost VM %s has a pending %s", v.Name, v.Pending.Type)
		}
	}
	if o.Record != nil && (o.Record.Type != RecordCheckpoint || o.Record.VM != "") {
		fail("bad record action %+v", o.Record)
	}
	// Every emitted action is legal at this point.
	live := func(pred func(v *VMState) bool) bool {
		for i := range o.VMs {
			if v := &o.VMs[i]; !v.Lost && !pred(v) {
				return false
			}
		}
		return true
	}
	for _, a := range emitted {
		if !ids[a.ID] {
			fail("emitted %s %v is not outstanding", fmtAct(a), a.ID)
		}
		if a.Host != "" && o.isDown(a.Host) {
			fail("action %s sent to a host known down", fmtAct(a))
		}
		var v *VMState
		if a.VM != "" {
			v = &o.VMs[o.index[a.VM]]
		}
		switch a.Type {
		case Detach:
			if !live(func(v *VMState) bool { return v.Prepare == StatusOK }) {
				fail("detach before every VM was prepared")
			}
		case Stop:
			if !live(func(v *VMState) bool { return v.Detach == StatusOK }) {
				fail("stop before every VM was detached")
			}
		case Save:
			if !live(func(v *VMState) bool { return v.Stop == StatusOK }) {
				fail("save before the cut (every VM stopped)")
			}
		case Migrate:
			if a.Live != o.Opts.Live || a.Dest != v.Dest || a.Host != v.Host {
				fail("bad migrate %+v", a)
			}
			if !o.Opts.Live && !live(func(v *VMState) bool { return v.Stop == StatusOK }) {
				fail("stop-and-copy migrate before every VM was stopped")
			}
			if o.Opts.Live && !live(func(v *VMState) bool { return v.Detach == StatusOK }) {
				fail("live migrate before every VM was detached")
			}
		case Resume:
			if a.Outcome == OutcomeAborted {
				if o.Committed && v.Dir != DirBack {
					fail("resume(aborted) of %s after the commit", a.VM)
				}
			} else {
				if a.Outcome != o.kindOutcome() || v.Dir != DirForward {
					fail("resume(%s) of %s (dir %q)", a.Outcome, a.VM, v.Dir)
				}
				if !o.Committed && !(o.moving(v) && v.Migrate == StatusOK) {
					fail("resume(%s) of %s before the commit", a.Outcome, a.VM)
				}
			}
		case RecordCheckpoint:
			if a.Outcome == CheckpointComplete {
				for i := range o.VMs {
					w := &o.VMs[i]
					if w.Save != StatusOK || w.Digest == "" || a.Digests[w.Name] != w.Digest {
						fail("checkpoint complete but %s has save %q digest %q", w.Name, w.Save, w.Digest)
					}
				}
			}
		case DeleteArtifacts:
			if o.Committed {
				fail("artifacts deleted after the commit")
			}
		case CancelMigrate:
			if v.Switched || a.Host != v.Dest {
				fail("cancel-migrate of %s at %s (switched %v)", a.VM, a.Host, v.Switched)
			}
		case Kill:
			if o.Kind == KindRestart && o.Committed && v.Dir != DirBack {
				fail("restart kill after the commit")
			}
			if o.Kind != KindRestart && (!o.moving(v) || a.Host != v.Host || !v.Switched || v.Finish != StatusOK) {
				fail("kill of %s at %s before its destination runs", a.VM, a.Host)
			}
		case Restore:
			if o.Kind != KindRestart {
				fail("restore in a %s", o.Kind)
			}
		}
	}
	// Over the whole log: a VM is resumed on one host only; one record
	// outcome per checkpoint; nothing resumed at a destination after a
	// cancel there.
	resumedOn := map[string]string{}
	cancelled := map[string]bool{}
	records := map[string]bool{}
	for _, a := range log {
		switch a.Type {
		case Resume:
			if h, ok := resumedOn[a.VM]; ok && h != a.Host {
				fail("vm %s resumed on %s and on %s", a.VM, h, a.Host)
			}
			resumedOn[a.VM] = a.Host
			if cancelled[a.VM+"@"+a.Host] {
				fail("vm %s resumed at %s after a cancel there", a.VM, a.Host)
			}
		case CancelMigrate:
			cancelled[a.VM+"@"+a.Host] = true
		case RecordCheckpoint:
			records[a.Outcome] = true
		}
	}
	if len(records) > 1 {
		fail("checkpoint recorded both complete and failed")
	}
	if o.Committed {
		if o.Phase != PhaseResume && o.Phase != PhaseSwitch && o.Phase != PhaseDone {
			fail("committed in phase %s", o.Phase)
		}
		if o.Kind == KindCheckpoint && !live(func(v *VMState) bool { return v.Save == StatusOK }) {
			fail("checkpoint committed without every save")
		}
	}
	if o.Done() {
		checkFinal(t, o, log)
	}
}

// checkFinal: nothing left paused, detached or half-done.
func checkFinal(t testing.TB, o *Op, log []Action) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("final invariant: "+format, args...)
	}
	if len(o.Outstanding()) != 0 {
		fail("done with outstanding actions %s", fmtActs(o.Outstanding()))
	}
	lastFinish := map[string]ActionType{}
	for _, a := range log {
		if a.Type == Resume || a.Type == Abort {
			lastFinish[a.VM] = a.Type
		}
	}
	want := OutcomeAborted
	if o.Committed {
		want = o.kindOutcome()
	}
	if o.Outcome != want {
		fail("op outcome %q, want %q", o.Outcome, want)
	}
	for i := range o.VMs {
		v := &o.VMs[i]
		if v.Lost {
			if v.Outcome != OutcomeLost {
				fail("lost vm %s has outcome %q", v.Name, v.Outcome)
			}
			continue
		}
		if !v.Finished {
			fail("vm %s not finished", v.Name)
		}
		switch v.Outcome {
		case OutcomeStranded:
			if v.Error == "" {
				fail("stranded vm %s without an error", v.Name)
			}
			continue
		case OutcomeAborted:
			if o.Committed && v.Dir != DirBack {
				fail("vm %s aborted in a committed op", v.Name)
			}
		case o.kindOutcome():
			if v.Dir != DirForward {
				fail("vm %s has outcome %s, dir %q", v.Name, v.Outcome, v.Dir)
			}
		default:
			fail("vm %s outcome %q", v.Name, v.Outcome)
		}
		if o.Kind == KindRestart {
			if v.Outcome == OutcomeRestored && (v.Finish != StatusOK || v.At != restoreTarget(v)) {
				fail("restored vm %s not running at its target", v.Name)
			}
			if v.Outcome == OutcomeAborted && (v.At != "" || (v.Restore != "" && v.Kill != StatusOK)) {
				fail("aborted restart left vm %s behind", v.Name)
			}
			continue
		}
		// Checkpoint, migrate: running, told, devices back.
		if v.Prepare != "" && v.Finish != StatusOK {
			fail("vm %s prepared but its round was not ended", v.Name)
		}
		if (v.Stop != "" || v.Migrate != "") && lastFinish[v.Name] != Resume {
			fail("vm %s may be paused: ended with %s", v.Name, lastFinish[v.Name])
		}
		if v.Detach != "" && v.Attach != StatusOK && !strings.Contains(v.Error, "attach") {
			fail("vm %s detached and not re-attached", v.Name)
		}
		if o.moving(v) {
			switch v.Outcome {
			case OutcomeMigrated:
				if !v.Switched || v.At != v.Dest {
					fail("migrated vm %s not at its destination", v.Name)
				}
			case OutcomeAborted:
				if v.Switched || v.At != v.Host {
					fail("aborted vm %s not at its source", v.Name)
				}
				if v.Migrate != "" && v.Cancel != StatusOK && !o.isDown(v.Dest) && !strings.Contains(v.Error, "cancel") {
					fail("vm %s: incoming copy not dropped", v.Name)
				}
			}
		}
		if o.Kind == KindCheckpoint && !o.Committed && v.Save != "" && v.Delete != StatusOK && !strings.Contains(v.Error, "delete") {
			fail("vm %s: partial artifacts left", v.Name)
		}
	}
	r := o.Result()
	if o.Kind == KindCheckpoint {
		if (r.Checkpoint == CheckpointComplete) != o.Committed {
			fail("checkpoint %q, committed %v", r.Checkpoint, o.Committed)
		}
		if o.Recorded != StatusOK && o.Error == "" {
			fail("checkpoint not recorded and no error")
		}
	}
}

func restoreTarget(v *VMState) string {
	if v.Dest != "" {
		return v.Dest
	}
	return v.Host
}

// checkRoundTrip: the journaled JSON reloads to the same state, and
// Recover re-issues exactly the outstanding actions, with fresh deadlines.
func checkRoundTrip(t testing.TB, o *Op) {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var o2 Op
	if err := json.Unmarshal(b, &o2); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	b2, _ := json.Marshal(&o2)
	if !bytes.Equal(b, b2) {
		t.Fatalf("JSON round trip differs:\n%s\n%s", b, b2)
	}
	want := o.Outstanding()
	now := o.Now.Add(time.Hour)
	got := o2.Recover(now)
	if len(got) != len(want) {
		t.Fatalf("Recover: %d actions %s, want %d %s", len(got), fmtActs(got), len(want), fmtActs(want))
	}
	for i := range got {
		if !got[i].Deadline.Equal(now.Add(o.timeout(got[i].Type))) {
			t.Fatalf("Recover: deadline %v not refreshed", got[i].Deadline)
		}
		g, w := got[i], want[i]
		g.Deadline, w.Deadline = time.Time{}, time.Time{}
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("Recover: action %d\n got %+v\nwant %+v", i, g, w)
		}
	}
}

func dump(o *Op) string {
	b, _ := json.MarshalIndent(o, "", "  ")
	return string(b)
}

var _ = fmt.Sprintf

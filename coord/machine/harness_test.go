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
	if ok && (a.Type == Save || a.Type == WaitSave) {
		r.Digest = "sha256:" + a.VM
	}
	if ok && a.Type == WaitSave {
		r.Pause, r.SnapshotAt = 20*time.Millisecond, now
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

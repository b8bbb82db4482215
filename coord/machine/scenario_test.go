package machine

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestScenarios runs the scenario files in testdata/: events in, actions
// and the journal out (go test -run TestScenarios -rewrite regenerates the
// expected output, which must then be read). Every step also goes through
// the invariants and the journal round trip of the harness.
//
// Commands:
//
//	new kind=K [live] [freeze] vms=(a@h1,b@h2>h3) [incoming=(a,b)] [ck=ID] [max=N] [bandwidth=B] [transfer=D]
//	ok|fail VM STEP [reason=R] [digest=D] [pause=D] [try=N] [running]   answer VM's outstanding STEP
//	ok|fail all STEP                                         answer every outstanding STEP, in VM order
//	ok|fail job record-checkpoint                            answer the job-level record
//	tick +D | tick deadline                                  advance the clock
//	hostdown H | cancel [reason=R]
//	recover [+D]                                             journal round trip (JSON), then Recover
//	finish                                                   answer everything OK until done
//	outstanding | result
//
// Each command prints the actions it emitted, one per line in emission
// order ("vm type@host (outcome) args try=N deadline=+D", D from the
// operation's start), then the journal, each line starting with "| ": the
// job line (phase, committed, outcome, checkpoint verdict, record status,
// hosts down, ignored results, reason, error) and one line per VM (where
// its copy is, its direction, each step's status, its outcome, its errors).
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var s scenario
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return s.do(t, d)
		})
	})
}

type scenario struct {
	h *harness
}

func (s *scenario) do(t *testing.T, d *datadriven.TestData) string {
	if d.Cmd != "new" && s.h == nil {
		d.Fatalf(t, "no operation: start with new")
	}
	if s.h != nil {
		s.h.t = t
	}
	var acts []Action
	switch d.Cmd {
	case "new":
		s.h = newScenario(t, d)
		acts = s.h.log
	case "ok", "fail":
		acts = s.answer(t, d)
	case "tick":
		acts = s.tick(t, d)
	case "hostdown":
		acts = s.h.hostDown(d.CmdArgs[0].Key)
	case "cancel":
		reason := ""
		d.MaybeScanArgs(t, "reason", &reason)
		acts = s.h.step(Cancel{Reason: reason, Now: s.h.now})
	case "recover":
		acts = s.recover(t, d)
	case "finish":
		acts = s.finish(t)
	case "outstanding":
		return fmtLines(s.h.op.Outstanding(), s.h.op.StartedAt)
	case "result":
		return fmtResult(s.h.op.Result())
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	return fmtLines(acts, s.h.op.StartedAt) + fmtJournal(s.h.op)
}

func newScenario(t *testing.T, d *datadriven.TestData) *harness {
	var kind, vmsArg string
	var incoming []string
	d.ScanArgs(t, "kind", &kind)
	for _, a := range d.CmdArgs {
		switch a.Key {
		case "vms":
			vmsArg = strings.Join(a.Vals, ",")
		case "incoming":
			incoming = a.Vals
		}
	}
	var vms []VM
	for _, spec := range strings.Split(vmsArg, ",") {
		name, where, _ := strings.Cut(spec, "@")
		host, dest, _ := strings.Cut(where, ">")
		vms = append(vms, VM{Name: name, Host: host, Dest: dest, Incoming: slices.Contains(incoming, name)})
	}
	opts := Options{CheckpointID: "ck1", TransferTimeout: 300 * time.Second, Live: d.HasArg("live"),
		Freeze: d.HasArg("freeze"), CopyStorage: d.HasArg("copy-storage")}
	d.MaybeScanArgs(t, "ck", &opts.CheckpointID)
	d.MaybeScanArgs(t, "max", &opts.MaxAttempts)
	d.MaybeScanArgs(t, "bandwidth", &opts.Bandwidth)
	var transfer string
	if d.MaybeScanArgs(t, "transfer", &transfer) {
		opts.TransferTimeout = parseDur(t, transfer)
	}
	if kind != string(KindCheckpoint) && kind != string(KindRestart) {
		opts.CheckpointID = ""
	}
	return start(t, Kind(kind), vms, opts)
}

func parseDur(t *testing.T, s string) time.Duration {
	dur, err := time.ParseDuration(strings.TrimPrefix(s, "+"))
	if err != nil {
		t.Fatalf("duration %q: %v", s, err)
	}
	return dur
}

// answer handles ok/fail VM STEP and ok/fail all STEP.
func (s *scenario) answer(t *testing.T, d *datadriven.TestData) []Action {
	if len(d.CmdArgs) < 2 {
		d.Fatalf(t, "usage: %s VM STEP", d.Cmd)
	}
	vm, step := d.CmdArgs[0].Key, ActionType(d.CmdArgs[1].Key)
	var targets []Action
	for _, a := range s.h.op.Outstanding() {
		if a.Type == step && (a.VM == vm || vm == "all" || (vm == "job" && a.VM == "")) {
			targets = append(targets, a)
		}
	}
	try := 0
	if d.MaybeScanArgs(t, "try", &try) { // a specific attempt, outstanding or not
		name := vm
		if vm == "job" {
			name = ""
		}
		targets = []Action{{ID: ActionID{Op: s.h.op.ID, VM: name, Step: step, Attempt: try}, Type: step, VM: name}}
	}
	if len(targets) == 0 {
		d.Fatalf(t, "no outstanding %s for %s; outstanding:\n%s", step, vm, fmtLines(s.h.op.Outstanding(), t0))
	}
	var out []Action
	for _, a := range targets {
		r := resultFor(a, d.Cmd == "ok", "", s.h.now)
		d.MaybeScanArgs(t, "reason", &r.Reason)
		r.Running = d.HasArg("running")
		if r.OK && a.Type == WaitSave {
			r.Digest, r.Pause, r.SnapshotAt = "sha256:"+a.VM, 20*time.Millisecond, s.h.now
		}
		d.MaybeScanArgs(t, "digest", &r.Digest)
		var pause string
		if d.MaybeScanArgs(t, "pause", &pause) {
			r.Pause = parseDur(t, pause)
		}
		s.h.forget(a.ID)
		out = append(out, s.h.step(r)...)
	}
	return out
}

// forget drops id from the harness's in-flight list (answered here).
func (h *harness) forget(id ActionID) {
	h.inflight = slices.DeleteFunc(h.inflight, func(a Action) bool { return a.ID == id })
}

func (s *scenario) tick(t *testing.T, d *datadriven.TestData) []Action {
	arg := d.CmdArgs[0].Key
	if arg == "deadline" {
		s.h.now = s.h.op.Deadline
		return s.h.step(Tick{Now: s.h.now})
	}
	return s.h.tick(parseDur(t, arg))
}

// recover plays a coordinator restart: the journaled JSON is all that
// survives.
func (s *scenario) recover(t *testing.T, d *datadriven.TestData) []Action {
	if len(d.CmdArgs) > 0 {
		s.h.now = s.h.now.Add(parseDur(t, d.CmdArgs[0].Key))
	}
	b, err := json.Marshal(s.h.op)
	if err != nil {
		t.Fatal(err)
	}
	var o Op
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	s.h.op = &o
	s.h.inflight = nil // the old driver's calls are gone; Recover re-issues them
	acts := o.Recover(s.h.now)
	s.h.after(acts)
	return acts
}

func (s *scenario) finish(t *testing.T) []Action {
	s.h.inflight = s.h.op.Outstanding()
	n := len(s.h.log)
	s.h.run(allOK)
	return s.h.log[n:]
}

// ---- output ----

func fmtLines(acts []Action, start time.Time) string {
	var b strings.Builder
	for _, a := range acts {
		b.WriteString(fmtFull(a, start) + "\n")
	}
	return b.String()
}

// fmtFull renders one action: "vm type@host (outcome) key=value...".
func fmtFull(a Action, start time.Time) string {
	who := a.VM
	if who == "" {
		who = "job"
	}
	s := who + " " + string(a.Type)
	if a.Host != "" {
		s += "@" + a.Host
	}
	if a.Outcome != "" {
		s += " (" + a.Outcome + ")"
	}
	if a.Dest != "" {
		s += " dest=" + a.Dest
	}
	if a.Live {
		s += " live"
	}
	if a.Freeze {
		s += " freeze"
	}
	if a.CopyStorage {
		s += " copy-storage"
	}
	if a.Bandwidth != 0 {
		s += " bandwidth=" + strconv.FormatInt(a.Bandwidth, 10)
	}
	if a.CheckpointID != "" {
		s += " ck=" + a.CheckpointID
	}
	if len(a.Digests) > 0 {
		s += " digests=" + fmtMap(a.Digests, func(d string) string { return d })
	}
	if len(a.Points) > 0 {
		s += " points=" + fmtMap(a.Points, func(p PointInfo) string {
			return fmt.Sprintf("%v@+%v", p.Pause, p.SnapshotAt.Sub(start))
		})
	}
	return s + fmt.Sprintf(" try=%d deadline=+%v", a.ID.Attempt, a.Deadline.Sub(start))
}

func fmtMap[V any](m map[string]V, f func(V) string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+":"+f(m[k]))
	}
	return strings.Join(parts, ",")
}

// fmtJournal renders the journaled state: the job line, then each VM.
func fmtJournal(o *Op) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| %s", o.Phase)
	if o.Committed {
		b.WriteString(" committed")
	}
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	kv("outcome", o.Outcome)
	kv("checkpoint", o.Checkpoint)
	kv("recorded", string(o.Recorded))
	kv("down", strings.Join(o.Down, ","))
	if o.Ignored > 0 {
		kv("ignored", strconv.Itoa(o.Ignored))
	}
	if o.Reason != "" {
		fmt.Fprintf(&b, " reason=%q", o.Reason)
	}
	if o.Error != "" {
		fmt.Fprintf(&b, " error=%q", o.Error)
	}
	b.WriteString("\n")
	for i := range o.VMs {
		b.WriteString("| " + fmtVM(&o.VMs[i]) + "\n")
	}
	return b.String()
}

func fmtVM(v *VMState) string {
	s := v.Name + " at=" + v.At
	if v.Dir != "" {
		s += " " + string(v.Dir)
	}
	if v.Switched {
		s += " switched"
	}
	if v.Incoming {
		s += " incoming"
	}
	for _, st := range []ActionType{Prepare, Detach, Arm, Fence, Stop, Point, Save, Launch, Migrate, Replace, Restore,
		CancelMigrate, Attach, Resume, WaitSave, Kill, DeleteArtifacts} {
		name := string(st)
		if st == Resume {
			name = "finish"
		}
		if x := *v.status(st); x != "" {
			s += " " + name + "=" + string(x)
		}
	}
	if v.Outcome != "" {
		s += " => " + v.Outcome
	}
	if v.Error != "" {
		s += fmt.Sprintf(" error=%q", v.Error)
	}
	return s
}

func fmtResult(r Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "done=%v committed=%v outcome=%s", r.Done, r.Committed, r.Outcome)
	if r.Checkpoint != "" {
		fmt.Fprintf(&b, " checkpoint=%s", r.Checkpoint)
	}
	if r.Reason != "" {
		fmt.Fprintf(&b, " reason=%q", r.Reason)
	}
	if r.Error != "" {
		fmt.Fprintf(&b, " error=%q", r.Error)
	}
	b.WriteString("\n")
	if len(r.Digests) > 0 {
		b.WriteString("digests " + fmtMap(r.Digests, func(d string) string { return d }) + "\n")
	}
	if len(r.Points) > 0 {
		b.WriteString("points " + fmtMap(r.Points, func(p PointInfo) string { return p.Pause.String() }) + "\n")
	}
	if len(r.Lost)+len(r.Stranded) > 0 {
		fmt.Fprintf(&b, "lost %v stranded %v\n", r.Lost, r.Stranded)
	}
	for _, v := range r.VMs {
		fmt.Fprintf(&b, "%s host=%s outcome=%s", v.Name, v.Host, v.Outcome)
		if v.Error != "" {
			fmt.Fprintf(&b, " error=%q", v.Error)
		}
		b.WriteString("\n")
	}
	return b.String()
}

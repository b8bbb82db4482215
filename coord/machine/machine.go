package machine

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Op is one operation on one job: the whole state of the protocol. It
// marshals to JSON (the exported fields are the state; the unexported ones
// are derived and rebuilt on first use after a reload).
type Op struct {
	ID        string    `json:"id"`
	Kind      Kind      `json:"kind"`
	Job       string    `json:"job"`
	Opts      Options   `json:"options"`
	VMs       []VMState `json:"vms"`
	Phase     Phase     `json:"phase"`
	Committed bool      `json:"committed,omitempty"`
	Outcome   string    `json:"outcome,omitempty"` // set when Done
	Reason    string    `json:"reason,omitempty"`  // first failure, if rolled back
	Error     string    `json:"error,omitempty"`   // job-level problems
	StartedAt time.Time `json:"started_at"`
	Now       time.Time `json:"now"` // latest driver time seen
	// Deadline is the earliest deadline of the outstanding actions (zero if
	// none): the driver needs no Tick before it.
	Deadline time.Time `json:"deadline,omitzero"`
	// Record is the outstanding job-level RecordCheckpoint action.
	Record      *Action `json:"record,omitempty"`
	Recorded    Status  `json:"recorded,omitempty"`
	RecordTries int     `json:"record_tries,omitempty"`
	// Checkpoint is the checkpoint's verdict once known: "complete" or
	// "failed" (checkpoint kind only).
	Checkpoint string   `json:"checkpoint,omitempty"`
	Down       []string `json:"down_hosts,omitempty"` // hosts reported by HostDown
	Ignored    int      `json:"ignored,omitempty"`    // stale, duplicate or unknown results

	ready       bool
	index       map[string]int // VM name -> index in VMs
	outstanding int            // outstanding actions (Pending, Side, Record)
	atDeadline  int            // outstanding actions whose deadline == Deadline
	dirtyAll    bool           // advance every VM before returning
	out         []Action       // actions emitted by the current call
}

// New starts an operation and returns its first actions. now is the
// driver's clock. It fails on invalid input (nothing is emitted then).
func New(id string, kind Kind, job string, vms []VM, opts Options, now time.Time) (*Op, []Action, error) {
	opts = opts.normalise()
	if err := validate(id, kind, vms, opts); err != nil {
		return nil, nil, err
	}
	o := &Op{ID: id, Kind: kind, Job: job, Opts: opts, StartedAt: now, Now: now,
		VMs: make([]VMState, len(vms))}
	for i, vm := range vms {
		if vm.Dest == vm.Host {
			vm.Dest = ""
		}
		v := VMState{VM: vm, At: vm.Host}
		if kind == KindCheckpoint || kind == KindRejuvenate {
			v.Dest = ""
		}
		if kind == KindRestart && vm.Dest != "" {
			v.At = vm.Dest
		}
		o.VMs[i] = v
	}
	o.ensure()
	if kind == KindRelease {
		o.release()
	} else {
		o.enter(o.phases()[0])
	}
	o.settle()
	return o, o.flush(), nil
}

func (opts Options) normalise() Options {
	if opts.PrepareTimeout <= 0 {
		opts.PrepareTimeout = DefaultPrepareTimeout
	}
	if opts.StepTimeout <= 0 {
		opts.StepTimeout = DefaultStepTimeout
	}
	if opts.TransferTimeout <= 0 {
		opts.TransferTimeout = opts.StepTimeout
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	return opts
}

func validate(id string, kind Kind, vms []VM, opts Options) error {
	if id == "" {
		return errors.New("machine: empty operation id")
	}
	if len(vms) == 0 {
		return errors.New("machine: no VMs")
	}
	seen := make(map[string]bool, len(vms))
	moving := 0
	for _, vm := range vms {
		if vm.Name == "" || vm.Host == "" {
			return fmt.Errorf("machine: VM %q: name and host are required", vm.Name)
		}
		if seen[vm.Name] {
			return fmt.Errorf("machine: VM %q listed twice", vm.Name)
		}
		seen[vm.Name] = true
		if vm.Dest != "" && vm.Dest != vm.Host {
			moving++
		}
		if vm.Incoming && (kind != KindRelease || vm.Dest != "") {
			return fmt.Errorf("machine: VM %q: Incoming applies to a release of a VM without Dest", vm.Name)
		}
	}
	return validateKind(kind, moving, opts)
}

func validateKind(kind Kind, moving int, opts Options) error {
	switch kind {
	case KindCheckpoint, KindRestart, KindMigrate, KindEvacuate, KindRejuvenate, KindRelease:
	default:
		return fmt.Errorf("machine: unknown kind %q", kind)
	}
	migration := kind == KindMigrate || kind == KindEvacuate
	switch {
	case (kind == KindCheckpoint || kind == KindRestart) && opts.CheckpointID == "":
		return fmt.Errorf("machine: %s needs a CheckpointID", kind)
	case migration && moving == 0:
		return fmt.Errorf("machine: %s: no VM has a Dest other than its Host", kind)
	case opts.Live && kind != KindCheckpoint && !migration:
		return fmt.Errorf("machine: Live applies to checkpoint, migrate and evacuate, not %s", kind)
	case opts.Bandwidth < 0:
		return fmt.Errorf("machine: negative Bandwidth %d", opts.Bandwidth)
	case opts.Bandwidth > 0 && !(opts.Live && kind == KindCheckpoint):
		return fmt.Errorf("machine: Bandwidth applies to a live checkpoint, not a %s (live %v)", kind, opts.Live)
	case opts.Freeze && !migration:
		return fmt.Errorf("machine: Freeze applies to migrate and evacuate, not %s", kind)
	case opts.CopyStorage && !migration:
		return fmt.Errorf("machine: CopyStorage applies to migrate and evacuate, not %s", kind)
	}
	return nil
}

// Step applies one event and returns the actions to execute, in order.
// The caller journals the Op before executing them.
func (o *Op) Step(ev Event) []Action {
	o.ensure()
	if o.Phase == PhaseDone {
		if _, ok := ev.(ActionResult); ok {
			o.Ignored++
		}
		return nil
	}
	switch e := ev.(type) {
	case ActionResult:
		o.clock(e.Now)
		o.onResult(e)
	case Tick:
		o.clock(e.Now)
		o.onTick()
	case HostDown:
		o.clock(e.Now)
		o.onHostDown(e.Host)
	case Cancel:
		o.clock(e.Now)
		reason := "cancelled"
		if e.Reason != "" {
			reason += ": " + e.Reason
		}
		o.fail(reason)
	}
	o.settle()
	return o.flush()
}

// Recover is called once on an Op reloaded from the journal (after a
// coordinator restart). It re-issues every outstanding action with its
// original ID, so hostd answers from its de-duplication record if it
// already ran it, and gives each a fresh deadline from now (the time the
// coordinator was away is not charged to the action). It then completes any
// transition the journal left pending. The operation continues from there:
// forward if it had not failed, rolling back if it had.
func (o *Op) Recover(now time.Time) []Action {
	o.ensure()
	o.clock(now)
	if o.Phase == PhaseDone {
		return nil
	}
	refresh := func(a *Action) {
		if a != nil {
			a.Deadline = o.Now.Add(o.timeout(a.Type))
			o.out = append(o.out, *a)
		}
	}
	for i := range o.VMs {
		refresh(o.VMs[i].Pending)
		refresh(o.VMs[i].Side)
	}
	refresh(o.Record)
	o.recomputeDeadline()
	o.dirtyAll = true
	o.settle()
	return o.flush()
}

// Done reports whether the operation is over (no outstanding actions).
func (o *Op) Done() bool { return o.Phase == PhaseDone }

// Outstanding returns the actions sent and not yet answered, in a stable
// order (VM order, main before side, the job-level record last).
func (o *Op) Outstanding() []Action {
	var out []Action
	for i := range o.VMs {
		if a := o.VMs[i].Pending; a != nil {
			out = append(out, *a)
		}
		if a := o.VMs[i].Side; a != nil {
			out = append(out, *a)
		}
	}
	if o.Record != nil {
		out = append(out, *o.Record)
	}
	return out
}

// Result reports the operation; it is final once Done.
func (o *Op) Result() Result {
	r := Result{Op: o.ID, Kind: o.Kind, Job: o.Job, Done: o.Done(), Committed: o.Committed,
		Outcome: o.Outcome, Reason: o.Reason, Error: o.Error, Ignored: o.Ignored,
		VMs: make([]VMResult, len(o.VMs))}
	if o.Kind == KindCheckpoint {
		r.CheckpointID = o.Opts.CheckpointID
		r.Checkpoint = o.Checkpoint
		if r.Checkpoint == CheckpointComplete {
			r.Digests = o.digests()
			if o.Opts.Live {
				r.Points = o.points()
			}
		}
	}
	if o.Kind == KindRestart {
		r.CheckpointID = o.Opts.CheckpointID
	}
	for i := range o.VMs {
		v := &o.VMs[i]
		r.VMs[i] = VMResult{Name: v.Name, Host: v.At, Step: v.Step, Outcome: v.Outcome, Error: v.Error, Digest: v.Digest}
		if v.Lost {
			r.Lost = append(r.Lost, v.Name)
		}
		if v.Outcome == OutcomeStranded {
			r.Stranded = append(r.Stranded, v.Name)
		}
	}
	return r
}

// UnmarshalJSON loads a journaled Op, discarding any derived state the
// receiver held (they are rebuilt on first use).
func (o *Op) UnmarshalJSON(b []byte) error {
	type plain Op // same fields, no methods
	var p plain
	err := json.Unmarshal(b, &p)
	*o = Op(p)
	return err
}

// ---- derived state ----

// ensure rebuilds the derived fields (after New or a JSON reload).
func (o *Op) ensure() {
	if o.ready {
		return
	}
	o.ready = true
	o.index = make(map[string]int, len(o.VMs))
	for i := range o.VMs {
		o.index[o.VMs[i].Name] = i
	}
	o.recomputeDeadline()
}

func (o *Op) recomputeDeadline() {
	o.outstanding, o.atDeadline, o.Deadline = 0, 0, time.Time{}
	for i := range o.VMs {
		o.count(o.VMs[i].Pending)
		o.count(o.VMs[i].Side)
	}
	o.count(o.Record)
}

func (o *Op) count(a *Action) {
	if a == nil {
		return
	}
	o.outstanding++
	switch {
	case o.Deadline.IsZero() || a.Deadline.Before(o.Deadline):
		o.Deadline, o.atDeadline = a.Deadline, 1
	case a.Deadline.Equal(o.Deadline):
		o.atDeadline++
	}
}

// drop removes the outstanding action in *slot and returns it.
func (o *Op) drop(slot **Action) *Action {
	a := *slot
	*slot = nil
	o.uncount(a)
	return a
}

// uncount forgets an action already removed from its slot.
func (o *Op) uncount(a *Action) {
	o.outstanding--
	if a.Deadline.Equal(o.Deadline) {
		o.atDeadline--
		if o.atDeadline == 0 {
			o.recomputeDeadline()
		}
	}
}

func (o *Op) clock(now time.Time) {
	if now.After(o.Now) {
		o.Now = now
	}
}

func (o *Op) flush() []Action {
	out := o.out
	o.out = nil
	return out
}

func (o *Op) timeout(t ActionType) time.Duration {
	switch t {
	case Prepare:
		return o.Opts.PrepareTimeout
	case Save, Migrate, Restore, WaitSave, Replace:
		return o.Opts.TransferTimeout
	}
	return o.Opts.StepTimeout
}

func (o *Op) isDown(host string) bool {
	for _, h := range o.Down {
		if h == host {
			return true
		}
	}
	return false
}

// moving reports whether v leaves its host (migrate/evacuate with a Dest).
func (o *Op) moving(v *VMState) bool {
	return (o.Kind == KindMigrate || o.Kind == KindEvacuate || o.Kind == KindRelease) && v.Dest != ""
}

// discards: v's copy at At is one nobody must run (a restart's restore,
// an incoming migration's copy): rolling back kills it.
func (o *Op) discards(v *VMState) bool { return o.Kind == KindRestart || v.Incoming }

// liveCheckpoint: a checkpoint whose VMs run on through the copy.
func (o *Op) liveCheckpoint() bool { return o.Kind == KindCheckpoint && o.Opts.Live }

func (o *Op) kindOutcome() string {
	switch o.Kind {
	case KindCheckpoint:
		return OutcomeCheckpointed
	case KindRestart:
		return OutcomeRestored
	case KindRejuvenate:
		return OutcomeRejuvenated
	}
	return OutcomeMigrated
}

// phases lists the forward (barrier) phases of the operation's kind.
func (o *Op) phases() []Phase {
	switch {
	case o.liveCheckpoint():
		return []Phase{PhasePrepare, PhaseArm, PhaseFence, PhasePoint}
	case o.Kind == KindCheckpoint:
		return []Phase{PhasePrepare, PhaseDetach, PhaseStop, PhaseSave}
	case o.Kind == KindRestart:
		return []Phase{PhaseRestore}
	case o.Kind == KindRejuvenate:
		return []Phase{PhasePrepare, PhaseDetach, PhaseStop, PhaseReplace}
	}
	if o.Opts.Live {
		return []Phase{PhasePrepare, PhaseDetach, PhaseMigrate}
	}
	return []Phase{PhasePrepare, PhaseDetach, PhaseStop, PhaseMigrate}
}

func (o *Op) digests() map[string]string {
	d := make(map[string]string, len(o.VMs))
	for i := range o.VMs {
		d[o.VMs[i].Name] = o.VMs[i].Digest
	}
	return d
}

func (o *Op) points() map[string]PointInfo {
	p := make(map[string]PointInfo, len(o.VMs))
	for i := range o.VMs {
		v := &o.VMs[i]
		p[v.Name] = PointInfo{Pause: v.Pause, SnapshotAt: v.SnapshotAt}
	}
	return p
}

func (v *VMState) status(t ActionType) *Status {
	switch t {
	case Prepare:
		return &v.Prepare
	case Detach:
		return &v.Detach
	case Stop:
		return &v.Stop
	case Save:
		return &v.Save
	case Migrate:
		return &v.Migrate
	case Launch:
		return &v.Launch
	case Restore:
		return &v.Restore
	case Arm:
		return &v.Arm
	case Fence:
		return &v.Fence
	case Point:
		return &v.Point
	case Replace:
		return &v.Replace
	case WaitSave:
		return &v.WaitSave
	case Attach:
		return &v.Attach
	case Resume, Abort:
		return &v.Finish
	case DeleteArtifacts:
		return &v.Delete
	case CancelMigrate:
		return &v.Cancel
	case Kill:
		return &v.Kill
	}
	panic("machine: no status for " + string(t))
}

func (v *VMState) addErr(msg string) {
	if v.Error != "" {
		v.Error += "; "
	}
	v.Error += msg
}

// ---- transitions ----

// settle runs phase transitions while nothing is outstanding.
func (o *Op) settle() {
	for {
		if o.dirtyAll {
			o.dirtyAll = false
			for i := range o.VMs {
				o.advance(&o.VMs[i])
			}
		}
		if o.outstanding > 0 || o.Phase == PhaseDone {
			return
		}
		switch o.Phase {
		case PhaseResume, PhaseSwitch, PhaseRollback, PhaseDiscard:
			if o.closeJob() {
				continue
			}
			o.Phase = PhaseDone
			o.Outcome = OutcomeAborted
			if o.Committed {
				o.Outcome = o.kindOutcome()
			}
			return
		}
		// A forward phase completed: every live VM succeeded.
		ph := o.phases()
		next := Phase("")
		for i, p := range ph {
			if p == o.Phase && i+1 < len(ph) {
				next = ph[i+1]
			}
		}
		if next != "" {
			o.enter(next)
		} else {
			o.commit()
		}
	}
}

func (o *Op) enter(p Phase) {
	o.Phase = p
	o.dirtyAll = true
}

// closeJob runs the job-level end of a live checkpoint once every VM's
// chain is over: record it complete if every stream was saved, else
// discard every VM's artifacts first and record it failed. It reports
// whether it started something.
func (o *Op) closeJob() bool {
	if !o.liveCheckpoint() || !o.Committed || o.Recorded != "" {
		return false
	}
	if o.Phase == PhaseDiscard {
		o.issueRecord(CheckpointFailed)
		return true
	}
	for i := range o.VMs {
		if v := &o.VMs[i]; v.WaitSave != StatusOK {
			o.streamFailed(v, "its stream was not saved: "+v.Error)
		}
	}
	if o.Checkpoint != CheckpointFailed {
		o.issueRecord(CheckpointComplete)
		return true
	}
	o.enter(PhaseDiscard)
	for i := range o.VMs {
		if v := &o.VMs[i]; !v.Lost {
			v.Finished = false
		}
	}
	return true
}

// streamFailed: v's live checkpoint stream will never be complete, so the
// checkpoint failed (the VMs run on).
func (o *Op) streamFailed(v *VMState, why string) {
	if o.Checkpoint == CheckpointFailed {
		return
	}
	o.Checkpoint = CheckpointFailed
	if o.Reason == "" {
		o.Reason = "vm " + v.Name + ": " + why
	}
}

// commit passes the commit point: from here on nothing rolls back.
func (o *Op) commit() {
	o.Committed = true
	o.Phase = PhaseResume
	if o.Kind == KindMigrate || o.Kind == KindEvacuate {
		o.Phase = PhaseSwitch
	}
	for i := range o.VMs {
		if v := &o.VMs[i]; !v.Lost && v.Dir == "" {
			v.Dir = DirForward
		}
	}
	if o.Kind == KindCheckpoint && !o.Opts.Live {
		o.issueRecord(CheckpointComplete)
	}
	o.dirtyAll = true
}

// release starts a release in its rollback. A step that may have been
// issued is undone (machine's rule), and the absent coordinator may have
// issued any: a migration source is presumed prepared, detached, stopped
// and its transfer complete; any other VM prepared, detached and stopped
// (Attach and Resume(aborted) undo a fence and an arm too); an incoming
// copy only exists.
func (o *Op) release() {
	for i := range o.VMs {
		if v := &o.VMs[i]; !v.Incoming {
			v.Prepare, v.Detach, v.Stop = StatusIssued, StatusIssued, StatusIssued
			if v.Dest != "" {
				v.Migrate = StatusOK
			}
		}
	}
	o.fail("released: its coordinator's lease ran out")
}

// fail rolls the operation back, unless it is past the commit point or
// already rolling back.
func (o *Op) fail(reason string) {
	if o.Committed || o.Phase == PhaseRollback || o.Phase == PhaseDone {
		return
	}
	o.Reason = reason
	o.Phase = PhaseRollback
	if o.Kind == KindCheckpoint {
		o.issueRecord(CheckpointFailed)
	}
	for i := range o.VMs {
		v := &o.VMs[i]
		if v.Lost || v.Dir != "" {
			continue
		}
		v.Dir = DirBack
		if v.Pending != nil && v.Pending.Type == Prepare {
			// Superseded by the Abort that follows; its answer is stale.
			o.drop(&v.Pending)
		}
	}
	o.dirtyAll = true
}

// advance emits v's next actions if it has none outstanding.
func (o *Op) advance(v *VMState) {
	if v.Side == nil && o.needCancel(v) {
		o.issue(v, &v.Side, CancelMigrate, v.Dest, "")
	}
	for v.Pending == nil && !v.Finished && !v.Lost {
		t, host, outcome := o.next(v)
		if t == "" {
			return
		}
		if o.isDown(host) { // never send to a dead hostd
			*v.status(t) = StatusFailed
			v.addErr(fmt.Sprintf("%s: host %s down", t, host))
			if t.forward() {
				o.fail(fmt.Sprintf("vm %s: %s: host %s down", v.Name, t, host))
			}
			if t == WaitSave {
				o.streamFailed(v, fmt.Sprintf("%s: host %s down", t, host))
			}
			continue
		}
		o.issue(v, &v.Pending, t, host, outcome)
	}
	if v.Side == nil && o.needLaunch(v) {
		o.issue(v, &v.Side, Launch, v.Host, "")
	}
}

// needLaunch: v moves and its destination's QEMU can start while its
// devices are detached (the user waits for the longer of the two, not
// for both). A storage migration's Migrate starts it, after creating the
// disks it needs.
func (o *Op) needLaunch(v *VMState) bool {
	return o.Phase == PhaseDetach && v.Dir == "" && !v.Lost && o.moving(v) && o.Kind != KindRelease &&
		!o.Opts.CopyStorage && v.Launch == "" && !o.isDown(v.Host) && !o.isDown(v.Dest)
}

// destCopy: a step was issued that may have left a copy of v at its
// destination (an empty incoming QEMU after Launch, the VM's state after
// Migrate).
func (o *Op) destCopy(v *VMState) bool {
	return o.moving(v) && (v.Migrate != "" || v.Launch != "")
}

// needCancel: the destination may hold an incoming copy that will never
// run, and can still be told to drop it.
func (o *Op) needCancel(v *VMState) bool {
	return o.destCopy(v) && v.Cancel == "" && !v.Switched &&
		(v.Lost || v.Dir == DirBack) && !o.isDown(v.Dest)
}

// next returns v's next main action, or "" (and maybe finishes v).
func (o *Op) next(v *VMState) (ActionType, string, string) {
	switch v.Dir {
	case "":
		t := ActionType(o.Phase)
		if !t.forward() || *v.status(t) != "" || (t == Migrate && !o.moving(v)) {
			return "", "", "" // waiting at the barrier
		}
		return t, v.At, ""
	case DirForward:
		return o.forwardNext(v)
	}
	return o.backNext(v)
}

// forwardNext: Attach, Resume(outcome) where the VM will run; after a
// migration, Kill the obsolete source once the destination runs. A live
// checkpoint resumes first, which unfences. A moving VM is resumed at its
// destination first too: it is paused at both ends until then (an Attach
// into its paused copy would only wait for it), and hostd plugs a device
// into a running guest (Resume attaches too), so its Attach follows and
// reports.
func (o *Op) forwardNext(v *VMState) (ActionType, string, string) {
	out := o.kindOutcome()
	at := v.At
	if o.moving(v) {
		at = v.Dest
	}
	switch {
	case o.liveCheckpoint() && v.Finish == "":
		// Its Resume lifts the network fence (and brings the devices
		// back once the stream is over): the fences are off one round
		// trip after the last point.
		return Resume, at, out
	case v.Attach == "" && !o.moving(v):
		return Attach, at, ""
	case v.Finish == "":
		return Resume, at, out
	case v.Attach == "":
		return Attach, at, ""
	case o.liveCheckpoint() && v.WaitSave == "":
		return WaitSave, v.Host, ""
	case o.Phase == PhaseDiscard && v.Delete == "":
		return DeleteArtifacts, v.Host, ""
	case o.moving(v) && v.Finish == StatusOK && v.Kill == "" && !o.isDown(v.Host):
		return Kill, v.Host, ""
	}
	o.finishVM(v, out)
	return "", "", ""
}

// backNext undoes, in reverse order, every step that was issued.
func (o *Op) backNext(v *VMState) (ActionType, string, string) {
	if o.discards(v) {
		if (v.Restore != "" || v.Incoming) && v.Kill == "" {
			return Kill, v.At, ""
		}
		o.finishVM(v, OutcomeAborted)
		return "", "", ""
	}
	switch {
	case (v.Detach != "" || v.Arm != "") && v.Attach == "":
		return Attach, v.Host, ""
	case v.Finish == "" && (o.copyHeld(v) || v.Prepare != ""):
		return o.finishBack(v)
	case (v.Save != "" || v.Arm != "" || v.Point != "") && v.Delete == "":
		return DeleteArtifacts, v.Host, ""
	}
	o.finishVM(v, OutcomeAborted)
	return "", "", ""
}

// copyHeld: a step was issued that may have paused or fenced the VM at
// its Host, or handed it to another QEMU; only Resume gives it back.
func (o *Op) copyHeld(v *VMState) bool {
	return v.Stop != "" || v.Migrate != "" || v.Replace != "" || v.Fence != "" || v.Point != ""
}

// finishBack ends a rolled-back VM's hold at its source: Resume(aborted)
// if it may be paused, else Abort. A moving VM's only once its
// destination's copy is gone: CancelMigrate succeeded, or the destination
// host is down (not for a release: its absent coordinator may have
// resumed the VM there); a Launch still outstanding is waited for, then
// cancelled. A CancelMigrate given up on a live destination after a
// Migrate strands the VM paused at its source (never two copies); after
// only a Launch, that copy never received the VM's state, so the source
// goes on (the error says what is left there).
func (o *Op) finishBack(v *VMState) (ActionType, string, string) {
	if o.destCopy(v) && v.Cancel != StatusOK && (o.Kind == KindRelease || !o.isDown(v.Dest)) {
		if v.Cancel != StatusFailed {
			return "", "", "" // its Launch or CancelMigrate is outstanding
		}
		if v.Migrate != "" {
			v.addErr(fmt.Sprintf("left paused at %s: its copy at %s was not cancelled", v.Host, v.Dest))
			v.Finished, v.Outcome = true, OutcomeStranded
			return "", "", ""
		}
		v.addErr(fmt.Sprintf("its empty incoming copy at %s was not cancelled", v.Dest))
	}
	if o.copyHeld(v) {
		return Resume, v.Host, OutcomeAborted
	}
	return Abort, v.Host, ""
}

func (o *Op) finishVM(v *VMState, outcome string) {
	v.Finished = true
	v.Outcome = outcome
	if v.Finish == StatusFailed || (o.discards(v) && v.Kill == StatusFailed) {
		v.Outcome = OutcomeStranded
	}
	if o.discards(v) && v.Dir == DirBack && v.Outcome != OutcomeStranded {
		v.At = "" // killed, or never created
	}
}

func (o *Op) issue(v *VMState, slot **Action, t ActionType, host, outcome string) {
	if v.Tries == nil {
		v.Tries = make(map[ActionType]int, 8)
	}
	v.Tries[t]++
	a := &Action{ID: ActionID{Op: o.ID, VM: v.Name, Step: t, Attempt: v.Tries[t]},
		Type: t, VM: v.Name, Host: host, Outcome: outcome, Deadline: o.Now.Add(o.timeout(t))}
	switch t {
	case Save, Restore, DeleteArtifacts, Point, WaitSave:
		a.CheckpointID = o.Opts.CheckpointID
	case Arm:
		a.CheckpointID, a.Bandwidth = o.Opts.CheckpointID, o.Opts.Bandwidth
	case Prepare:
		a.Freeze = o.Opts.Freeze
	case Migrate:
		a.Dest, a.Live, a.CopyStorage = v.Dest, o.Opts.Live, o.Opts.CopyStorage
	case CancelMigrate, Launch:
		a.Dest = v.Dest
	case Resume:
		if o.moving(v) && host == v.Dest {
			// From here the destination may run the VM: the source
			// must never be resumed again.
			v.Switched, v.At = true, v.Dest
		}
	}
	*slot = a
	*v.status(t) = StatusIssued
	v.Step = t
	o.count(a)
	o.out = append(o.out, *a)
}

func (o *Op) issueRecord(outcome string) {
	o.RecordTries++
	a := &Action{ID: ActionID{Op: o.ID, Step: RecordCheckpoint, Attempt: o.RecordTries},
		Type: RecordCheckpoint, Outcome: outcome, CheckpointID: o.Opts.CheckpointID,
		Deadline: o.Now.Add(o.timeout(RecordCheckpoint))}
	if outcome == CheckpointComplete {
		a.Digests = o.digests()
		if o.Opts.Live {
			a.Points = o.points()
		}
	}
	o.Checkpoint = outcome
	if o.Record != nil { // defensive: commit and fail exclude each other
		o.drop(&o.Record)
	}
	o.Record = a
	o.Recorded = StatusIssued
	o.count(a)
	o.out = append(o.out, *a)
}

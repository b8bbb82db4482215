package machine

import (
	"strings"
	"testing"
	"time"
)

// checkStep checks the invariants after one step; emitted are the actions
// the step returned, log all actions so far.
func checkStep(t testing.TB, o *Op, emitted, log []Action) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("invariant (phase %s): "+format, append([]any{o.Phase}, args...)...)
	}
	ids := checkOutstanding(o, fail)
	seen := map[ActionID]int{}
	for _, a := range log {
		seen[a.ID]++
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
		if seen[a.ID] > 1 {
			continue // re-issued by Recover: checked when it was first sent
		}
		checkForward(o, a, v, fail)
		checkClosing(o, a, v, fail)
	}
	checkLog(log, fail)
	if o.Committed {
		if o.Phase != PhaseResume && o.Phase != PhaseSwitch && o.Phase != PhaseDiscard && o.Phase != PhaseDone {
			fail("committed in phase %s", o.Phase)
		}
		if o.Kind == KindCheckpoint && !o.Opts.Live && !all(o, func(v *VMState) bool { return v.Save == StatusOK }) {
			fail("checkpoint committed without every save")
		}
		if o.liveCheckpoint() && !all(o, func(v *VMState) bool { return v.Point == StatusOK || v.Dir != DirForward }) {
			fail("live checkpoint committed without every snapshot point")
		}
	}
	if o.Done() {
		checkFinal(t, o, log)
	}
}

// all reports whether pred holds for every VM not lost.
func all(o *Op, pred func(v *VMState) bool) bool {
	for i := range o.VMs {
		if v := &o.VMs[i]; !v.Lost && !pred(v) {
			return false
		}
	}
	return true
}

// checkOutstanding: the outstanding actions are well formed and accounted
// for; it returns their IDs.
func checkOutstanding(o *Op, fail func(string, ...any)) map[ActionID]bool {
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
		if v.Side != nil && v.Side.Type != CancelMigrate && v.Side.Type != Launch {
			fail("side action %s", v.Side.Type)
		}
		if v.Lost && v.Pending != nil {
			fail("lost VM %s has a pending %s", v.Name, v.Pending.Type)
		}
	}
	if o.Record != nil && (o.Record.Type != RecordCheckpoint || o.Record.VM != "") {
		fail("bad record action %+v", o.Record)
	}
	return ids
}

// checkForward: a forward action goes out only once its barrier passed.
func checkForward(o *Op, a Action, v *VMState, fail func(string, ...any)) {
	after := func(what string, pred func(v *VMState) bool) {
		if !all(o, pred) {
			fail("%s before every VM %s", a.Type, what)
		}
	}
	if a.Type.forward() && (o.Committed || v.Dir != "") {
		fail("forward %s of %s after the commit or in its closing chain", a.Type, a.VM)
	}
	switch a.Type {
	case Detach:
		after("was prepared", func(v *VMState) bool { return v.Prepare == StatusOK })
	case Stop:
		after("was detached", func(v *VMState) bool { return v.Detach == StatusOK })
	case Save:
		after("was stopped (the cut)", func(v *VMState) bool { return v.Stop == StatusOK })
	case Arm:
		after("was prepared", func(v *VMState) bool { return v.Prepare == StatusOK })
		if a.Bandwidth != o.Opts.Bandwidth || a.CheckpointID != o.Opts.CheckpointID {
			fail("bad arm %+v", a)
		}
	case Fence:
		after("was armed", func(v *VMState) bool { return v.Arm == StatusOK })
	case Point:
		after("was fenced (the cut)", func(v *VMState) bool { return v.Fence == StatusOK })
	case Replace:
		after("was stopped", func(v *VMState) bool { return v.Stop == StatusOK })
	case Migrate:
		if a.Live != o.Opts.Live || a.Dest != v.Dest || a.Host != v.Host {
			fail("bad migrate %+v", a)
		}
		if o.Opts.Live {
			after("was detached", func(v *VMState) bool { return v.Detach == StatusOK })
		} else {
			after("was stopped", func(v *VMState) bool { return v.Stop == StatusOK })
		}
		if (v.Launch == StatusOK) == o.Opts.CopyStorage {
			fail("migrate of %s with launch %q (copy storage %v)", a.VM, v.Launch, o.Opts.CopyStorage)
		}
	case Launch:
		if o.Phase != PhaseDetach || !o.moving(v) || o.Opts.CopyStorage || a.Dest != v.Dest || a.Host != v.Host {
			fail("bad launch %+v in phase %s", a, o.Phase)
		}
		after("was prepared", func(v *VMState) bool { return v.Prepare == StatusOK })
	case Prepare:
		if a.Freeze != o.Opts.Freeze {
			fail("prepare without the op's Freeze")
		}
	case Restore:
		if o.Kind != KindRestart {
			fail("restore in a %s", o.Kind)
		}
	}
	if o.liveCheckpoint() && (a.Type == Detach || a.Type == Stop || a.Type == Save) {
		fail("%s in a live checkpoint", a.Type)
	}
}

// checkClosing: closing actions keep the protocol's promises.
func checkClosing(o *Op, a Action, v *VMState, fail func(string, ...any)) {
	if (a.Type == Abort || (a.Type == Resume && a.Outcome == OutcomeAborted)) && o.destCopy(v) &&
		(v.Cancel == "" || v.Cancel == StatusIssued) && (o.Kind == KindRelease || !o.isDown(v.Dest)) {
		fail("%s of %s at its source before its copy at %s was dropped (cancel %q)", a.Type, a.VM, v.Dest, v.Cancel)
	}
	switch a.Type {
	case Resume:
		checkResume(o, a, v, fail)
	case WaitSave:
		if !o.liveCheckpoint() || !o.Committed || v.Finish == "" || a.ID.Attempt != 1 || a.Host != v.Host {
			fail("wait-save of %s (live %v, committed %v, finish %q, attempt %d)",
				a.VM, o.Opts.Live, o.Committed, v.Finish, a.ID.Attempt)
		}
	case RecordCheckpoint:
		if a.Outcome == CheckpointComplete {
			for i := range o.VMs {
				w := &o.VMs[i]
				saved := w.Save
				if o.Opts.Live {
					saved = w.WaitSave
				}
				if saved != StatusOK || w.Digest == "" || a.Digests[w.Name] != w.Digest {
					fail("checkpoint complete but %s has save %q digest %q", w.Name, saved, w.Digest)
				}
				if o.Opts.Live && a.Points[w.Name].SnapshotAt != w.SnapshotAt {
					fail("checkpoint complete without %s's point", w.Name)
				}
			}
		}
		if a.Outcome == CheckpointFailed && o.liveCheckpoint() && o.Committed {
			if !all(o, func(v *VMState) bool { return v.Delete != StatusIssued && v.Finished }) {
				fail("live checkpoint recorded failed before its artifacts were deleted")
			}
		}
	case DeleteArtifacts:
		if o.Committed && o.Phase != PhaseDiscard {
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
		if !o.discards(v) && (!o.moving(v) || a.Host != v.Host || !v.Switched || v.Finish != StatusOK) {
			fail("kill of %s at %s before its destination runs", a.VM, a.Host)
		}
	}
}

func checkResume(o *Op, a Action, v *VMState, fail func(string, ...any)) {
	if a.Outcome != OutcomeAborted {
		if a.Outcome != o.kindOutcome() || v.Dir != DirForward {
			fail("resume(%s) of %s (dir %q)", a.Outcome, a.VM, v.Dir)
		}
		if !o.Committed && !(o.moving(v) && v.Migrate == StatusOK) {
			fail("resume(%s) of %s before the commit", a.Outcome, a.VM)
		}
		return
	}
	if o.Committed && v.Dir != DirBack {
		fail("resume(aborted) of %s after the commit", a.VM)
	}
	if o.moving(v) && v.Migrate != "" && v.Cancel != StatusOK && (o.Kind == KindRelease || !o.isDown(v.Dest)) {
		fail("source of %s resumed before its copy at %s was cancelled (cancel %q)", a.VM, v.Dest, v.Cancel)
	}
}

// checkLog, over the whole log: a VM is resumed on one host only; one
// record outcome per checkpoint; nothing resumed at a destination after a
// cancel there; WaitSave never retried.
func checkLog(log []Action, fail func(string, ...any)) {
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
		case WaitSave:
			if a.ID.Attempt != 1 {
				fail("wait-save of %s retried", a.VM)
			}
		}
	}
	if len(records) > 1 {
		fail("checkpoint recorded both complete and failed")
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
	want := OutcomeAborted
	if o.Committed {
		want = o.kindOutcome()
	}
	if o.Outcome != want {
		fail("op outcome %q, want %q", o.Outcome, want)
	}
	lastFinish := map[string]ActionType{}
	for _, a := range log {
		if a.Type == Resume || a.Type == Abort {
			lastFinish[a.VM] = a.Type
		}
	}
	for i := range o.VMs {
		if v := &o.VMs[i]; !v.Lost {
			checkFinalVM(o, v, lastFinish[v.Name], fail)
		} else if v.Outcome != OutcomeLost {
			fail("lost vm %s has outcome %q", v.Name, v.Outcome)
		}
	}
	if o.Kind == KindCheckpoint {
		checkFinalCheckpoint(o, fail)
	}
}

func checkFinalVM(o *Op, v *VMState, lastFinish ActionType, fail func(string, ...any)) {
	if !v.Finished {
		fail("vm %s not finished", v.Name)
	}
	switch v.Outcome {
	case OutcomeStranded:
		if v.Error == "" {
			fail("stranded vm %s without an error", v.Name)
		}
		return
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
	if o.discards(v) {
		if v.Outcome == OutcomeRestored && (v.Finish != StatusOK || v.At != restoreTarget(v)) {
			fail("restored vm %s not running at its target", v.Name)
		}
		if v.Outcome == OutcomeAborted && (v.At != "" || ((v.Restore != "" || v.Incoming) && v.Kill != StatusOK)) {
			fail("aborted restart left vm %s behind", v.Name)
		}
		return
	}
	// Checkpoint, migrate, rejuvenate: running, told, devices back.
	if v.Prepare != "" && v.Finish != StatusOK {
		fail("vm %s prepared but its round was not ended", v.Name)
	}
	// A release that found its VM running at the destination resumed
	// nothing: the destination had.
	if o.copyHeld(v) && lastFinish != Resume && !(o.Kind == KindRelease && v.Switched) {
		fail("vm %s may be paused or fenced: ended with %s", v.Name, lastFinish)
	}
	if (v.Detach != "" || v.Arm != "") && v.Attach != StatusOK && !strings.Contains(v.Error, "attach") {
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
			if v.Migrate != "" && v.Cancel != StatusOK && !o.isDown(v.Dest) {
				fail("vm %s: incoming copy not dropped", v.Name)
			}
			if v.Launch != "" && v.Cancel != StatusOK && !o.isDown(v.Dest) && !strings.Contains(v.Error, "empty incoming copy") {
				fail("vm %s: launched copy not dropped, and no error says so", v.Name)
			}
		}
	}
	if o.Kind == KindCheckpoint && o.Checkpoint == CheckpointFailed && (v.Save != "" || v.Arm != "") &&
		v.Delete != StatusOK && !strings.Contains(v.Error, "delete") {
		fail("vm %s: partial artifacts left", v.Name)
	}
}

func checkFinalCheckpoint(o *Op, fail func(string, ...any)) {
	r := o.Result()
	saved := all(o, func(v *VMState) bool { return v.Save == StatusOK })
	if o.Opts.Live {
		saved = true
		for i := range o.VMs {
			saved = saved && o.VMs[i].WaitSave == StatusOK
		}
	}
	if complete := r.Checkpoint == CheckpointComplete; complete != (o.Committed && saved) {
		fail("checkpoint %q, committed %v, every VM saved %v", r.Checkpoint, o.Committed, saved)
	}
	if r.Checkpoint == CheckpointFailed && r.Reason == "" {
		fail("failed checkpoint without a reason")
	}
	if o.Recorded != StatusOK && o.Error == "" {
		fail("checkpoint not recorded and no error")
	}
}

func restoreTarget(v *VMState) string {
	if v.Dest != "" {
		return v.Dest
	}
	return v.Host
}

package machine

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

var vms3 = []VM{{Name: "a", Host: "h1"}, {Name: "b", Host: "h2"}, {Name: "c", Host: "h3"}}

var ckOpts = Options{CheckpointID: "ck1", PrepareTimeout: 10 * time.Second, StepTimeout: 5 * time.Second}

func TestCheckpointHappy(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	if h.op.Phase != PhasePrepare || len(h.inflight) != 3 {
		t.Fatalf("start: phase %s, %s", h.op.Phase, fmtActs(h.inflight))
	}
	for _, p := range []struct {
		answer ActionType
		next   Phase
	}{{Prepare, PhaseDetach}, {Detach, PhaseStop}, {Stop, PhaseSave}, {Save, PhaseResume}} {
		h.answerAll(p.answer, true)
		if h.op.Phase != p.next {
			t.Fatalf("after %s: phase %s, want %s", p.answer, h.op.Phase, p.next)
		}
	}
	if !h.op.Committed {
		t.Fatal("not committed after every save")
	}
	h.run(allOK)
	for _, vm := range []string{"a", "b", "c"} {
		h.wantSeq(vm, "prepare@h"+vm2n(vm), "detach@h"+vm2n(vm), "stop@h"+vm2n(vm), "save@h"+vm2n(vm),
			"attach@h"+vm2n(vm), "resume@h"+vm2n(vm)+"(checkpointed)")
	}
	r := h.op.Result()
	want := map[string]string{"a": "sha256:a", "b": "sha256:b", "c": "sha256:c"}
	if !r.Done || r.Outcome != OutcomeCheckpointed || r.Checkpoint != CheckpointComplete || !reflect.DeepEqual(r.Digests, want) {
		t.Fatalf("result %+v", r)
	}
	for _, v := range r.VMs {
		if v.Outcome != OutcomeCheckpointed || v.Error != "" || v.Step != Resume {
			t.Errorf("vm %+v", v)
		}
	}
	if h.count(RecordCheckpoint) != 1 || h.op.Recorded != StatusOK {
		t.Errorf("record: %d actions, %s", h.count(RecordCheckpoint), h.op.Recorded)
	}
	for _, a := range h.log {
		if a.Type == RecordCheckpoint && (a.Outcome != CheckpointComplete || !reflect.DeepEqual(a.Digests, want)) {
			t.Errorf("record %+v", a)
		}
	}
}

func vm2n(vm string) string { return map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"}[vm] }

func TestGuestRefuses(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answer(Prepare, "a", true, "")
	acts := h.answer(Prepare, "b", false, "refused: solver mid-step")
	// c's Prepare is still running: it is superseded by an Abort at once.
	if got := fmtActs(acts); got != "[:record-checkpoint(failed) b:abort@h2 a:abort@h1 c:abort@h3]" {
		t.Fatalf("rollback actions %s", got)
	}
	h.answer(Prepare, "c", true, "") // late: ignored
	if h.op.Ignored != 1 {
		t.Fatalf("ignored %d", h.op.Ignored)
	}
	h.run(allOK)
	for _, vm := range []string{"a", "b", "c"} {
		h.wantSeq(vm, "prepare@h"+vm2n(vm), "abort@h"+vm2n(vm))
	}
	r := h.op.Result()
	if r.Outcome != OutcomeAborted || r.Checkpoint != CheckpointFailed || !strings.Contains(r.Reason, "refused: solver mid-step") {
		t.Fatalf("result %+v", r)
	}
	if h.count(Detach) != 0 {
		t.Fatal("detached after a refusal")
	}
}

func TestPrepareDeadline(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answer(Prepare, "a", true, "")
	h.answer(Prepare, "b", true, "")
	if !h.op.Deadline.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("deadline %v", h.op.Deadline)
	}
	if acts := h.tick(10*time.Second - 1); len(acts) != 0 {
		t.Fatalf("early tick: %s", fmtActs(acts))
	}
	acts := h.tick(1)
	if got := fmtActs(acts); got != "[:record-checkpoint(failed) a:abort@h1 b:abort@h2 c:abort@h3]" {
		t.Fatalf("deadline actions %s", got)
	}
	if !strings.Contains(h.op.Reason, "vm c: prepare: deadline") {
		t.Fatalf("reason %q", h.op.Reason)
	}
	h.answer(Prepare, "c", true, "") // too late
	h.run(allOK)
	if r := h.op.Result(); r.Outcome != OutcomeAborted || r.Ignored != 1 || !strings.Contains(r.VMs[2].Error, "deadline") {
		t.Fatalf("result %+v", r)
	}
}

func TestDetachFails(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answerAll(Prepare, true)
	h.answer(Detach, "b", false, "device busy")
	// a and c are still detaching: they undo only once answered.
	if h.op.Phase != PhaseRollback || h.vm("a").Pending.Type != Detach {
		t.Fatalf("phase %s, a pending %v", h.op.Phase, h.vm("a").Pending)
	}
	h.run(allOK)
	for _, vm := range []string{"a", "b", "c"} {
		n := vm2n(vm)
		h.wantSeq(vm, "prepare@h"+n, "detach@h"+n, "attach@h"+n, "abort@h"+n)
	}
	if h.count(Stop) != 0 {
		t.Fatal("stopped after a detach failure")
	}
}

func TestSaveFails(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Stop, true)
	h.answer(Save, "a", true, "")
	h.answer(Save, "b", false, "ENOSPC")
	h.run(allOK)
	for _, vm := range []string{"a", "b", "c"} {
		n := vm2n(vm)
		h.wantSeq(vm, "prepare@h"+n, "detach@h"+n, "stop@h"+n, "save@h"+n,
			"attach@h"+n, "resume@h"+n+"(aborted)", "delete-artifacts@h"+n)
	}
	r := h.op.Result()
	if r.Checkpoint != CheckpointFailed || r.Outcome != OutcomeAborted || r.Digests != nil {
		t.Fatalf("result %+v", r)
	}
	for _, v := range r.VMs {
		if v.Outcome != OutcomeAborted {
			t.Errorf("vm %+v", v)
		}
	}
	for _, a := range h.log {
		if a.Type == RecordCheckpoint && a.Outcome != CheckpointFailed {
			t.Errorf("record %+v", a)
		}
	}
}

func TestHostDownDuringSave(t *testing.T) {
	vms := []VM{{Name: "a", Host: "h1"}, {Name: "b", Host: "h2"}, {Name: "c", Host: "h2"}, {Name: "d", Host: "h3"}}
	h := start(t, KindCheckpoint, vms, ckOpts)
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Stop, true)
	h.answer(Save, "a", true, "")
	acts := h.hostDown("h2")
	if got := fmtActs(acts); got != "[:record-checkpoint(failed) a:attach@h1]" {
		t.Fatalf("host down actions %s", got)
	}
	h.run(allOK) // d's save answers, then d rolls back too; b, c answers are stale
	h.wantSeq("a", "prepare@h1", "detach@h1", "stop@h1", "save@h1", "attach@h1", "resume@h1(aborted)", "delete-artifacts@h1")
	h.wantSeq("b", "prepare@h2", "detach@h2", "stop@h2", "save@h2")
	h.wantSeq("d", "prepare@h3", "detach@h3", "stop@h3", "save@h3", "attach@h3", "resume@h3(aborted)", "delete-artifacts@h3")
	r := h.op.Result()
	if r.Checkpoint != CheckpointFailed || !reflect.DeepEqual(r.Lost, []string{"b", "c"}) || r.Reason != "host h2 down" {
		t.Fatalf("result %+v", r)
	}
	if r.VMs[1].Host != "h2" || r.VMs[1].Outcome != OutcomeLost || r.VMs[1].Step != Save {
		t.Fatalf("lost vm %+v", r.VMs[1])
	}
}

func TestHostDownAfterCheckpointCommit(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Stop, true)
	h.answerAll(Save, true)
	h.answer(Attach, "a", true, "")
	h.hostDown("h2")
	h.run(allOK)
	r := h.op.Result()
	if r.Checkpoint != CheckpointComplete || r.Outcome != OutcomeCheckpointed || !reflect.DeepEqual(r.Lost, []string{"b"}) {
		t.Fatalf("result %+v", r)
	}
	if r.VMs[0].Outcome != OutcomeCheckpointed || r.VMs[2].Outcome != OutcomeCheckpointed {
		t.Fatalf("vms %+v", r.VMs)
	}
}

var rsVMs = []VM{{Name: "a", Host: "h1"}, {Name: "b", Host: "h2", Dest: "h9"}, {Name: "c", Host: "h3"}}

func TestRestartHappy(t *testing.T) {
	h := start(t, KindRestart, rsVMs, ckOpts)
	if h.op.Phase != PhaseRestore {
		t.Fatalf("phase %s", h.op.Phase)
	}
	h.run(allOK)
	h.wantSeq("a", "restore@h1", "attach@h1", "resume@h1(restored)")
	h.wantSeq("b", "restore@h9", "attach@h9", "resume@h9(restored)")
	r := h.op.Result()
	if r.Outcome != OutcomeRestored || r.VMs[1].Host != "h9" || r.Checkpoint != "" || r.CheckpointID != "ck1" {
		t.Fatalf("result %+v", r)
	}
	for _, a := range h.log {
		if a.Type == Restore && a.CheckpointID != "ck1" {
			t.Fatalf("restore %+v", a)
		}
	}
}

func TestRestartOneRestoreFails(t *testing.T) {
	h := start(t, KindRestart, rsVMs, ckOpts)
	h.answer(Restore, "a", true, "")
	h.answer(Restore, "b", false, "artifact digest mismatch")
	h.run(allOK)
	h.wantSeq("a", "restore@h1", "kill@h1")
	h.wantSeq("b", "restore@h9", "kill@h9")
	h.wantSeq("c", "restore@h3", "kill@h3")
	r := h.op.Result()
	if r.Outcome != OutcomeAborted || !strings.Contains(r.Reason, "digest mismatch") {
		t.Fatalf("result %+v", r)
	}
	for _, v := range r.VMs {
		if v.Outcome != OutcomeAborted || v.Host != "" {
			t.Errorf("vm %+v", v)
		}
	}
	if h.count(Resume) != 0 {
		t.Fatal("resumed in a failed restart")
	}
}

var mgVMs = []VM{{Name: "a", Host: "h1", Dest: "h4"}, {Name: "b", Host: "h1", Dest: "h5"}, {Name: "c", Host: "h2"}}

func TestMigrateHappy(t *testing.T) {
	for _, kind := range []Kind{KindMigrate, KindEvacuate} {
		t.Run(string(kind), func(t *testing.T) {
			h := start(t, kind, mgVMs, Options{})
			h.answerAll(Prepare, true)
			h.answerAll(Detach, true)
			h.answerAll(Launch, true)
			h.answerAll(Stop, true)
			if h.op.Phase != PhaseMigrate || len(h.inflight) != 2 {
				t.Fatalf("phase %s, in flight %s", h.op.Phase, fmtActs(h.inflight))
			}
			h.answer(Migrate, "a", true, "")
			if h.vm("a").Switched {
				t.Fatal("switched before the commit")
			}
			h.answer(Migrate, "b", true, "")
			if !h.op.Committed || h.op.Phase != PhaseSwitch {
				t.Fatalf("phase %s", h.op.Phase)
			}
			h.run(allOK)
			h.wantSeq("a", "prepare@h1", "detach@h1", "launch@h1", "stop@h1", "migrate@h1", "resume@h4(migrated)", "attach@h4", "kill@h1")
			h.wantSeq("b", "prepare@h1", "detach@h1", "launch@h1", "stop@h1", "migrate@h1", "resume@h5(migrated)", "attach@h5", "kill@h1")
			h.wantSeq("c", "prepare@h2", "detach@h2", "stop@h2", "attach@h2", "resume@h2(migrated)")
			r := h.op.Result()
			if r.Outcome != OutcomeMigrated || r.VMs[0].Host != "h4" || r.VMs[1].Host != "h5" || r.VMs[2].Host != "h2" {
				t.Fatalf("result %+v", r)
			}
		})
	}
}

func TestMigrateFailsBeforeCommit(t *testing.T) {
	h := start(t, KindMigrate, mgVMs, Options{})
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Launch, true)
	h.answerAll(Stop, true)
	h.answer(Migrate, "a", true, "") // a's destination holds a complete paused copy
	h.answer(Migrate, "b", false, "connection reset")
	h.run(allOK)
	h.wantSeq("a", "prepare@h1", "detach@h1", "launch@h1", "stop@h1", "migrate@h1", "cancel-migrate@h4", "attach@h1", "resume@h1(aborted)")
	h.wantSeq("b", "prepare@h1", "detach@h1", "launch@h1", "stop@h1", "migrate@h1", "cancel-migrate@h5", "attach@h1", "resume@h1(aborted)")
	h.wantSeq("c", "prepare@h2", "detach@h2", "stop@h2", "attach@h2", "resume@h2(aborted)")
	r := h.op.Result()
	if r.Outcome != OutcomeAborted || r.VMs[0].Host != "h1" {
		t.Fatalf("result %+v", r)
	}
}

// While one migration is still running, the rollback cancels it at its
// destination at once and waits for its answer before resuming the source.
func TestMigrateCancelWhileRunning(t *testing.T) {
	h := start(t, KindMigrate, mgVMs, Options{})
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Launch, true)
	h.answerAll(Stop, true)
	acts := h.answer(Migrate, "a", false, "destination refused")
	if got := fmtActs(acts); got != "[a:cancel-migrate@h4 a:attach@h1 b:cancel-migrate@h5 c:attach@h2]" {
		t.Fatalf("rollback %s", got)
	}
	if h.vm("b").Pending.Type != Migrate {
		t.Fatal("b's migrate was dropped")
	}
	h.answer(CancelMigrate, "b", true, "")
	acts = h.answer(Migrate, "b", false, "cancelled")
	if got := fmtActs(acts); got != "[b:attach@h1]" {
		t.Fatalf("after b's migrate: %s", got)
	}
	h.run(allOK)
}

func TestMigrateDestinationLostAfterCommit(t *testing.T) {
	vms := []VM{{Name: "a", Host: "h1", Dest: "h4"}, {Name: "b", Host: "h1", Dest: "h5"}, {Name: "c", Host: "h2", Dest: "h6"}}
	h := start(t, KindMigrate, vms, Options{})
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Launch, true)
	h.answerAll(Stop, true)
	h.answerAll(Migrate, true)
	// Every moved VM is resumed at its destination at once (switched):
	// a runs at h4; b's and c's Resumes are in flight when their
	// destinations go down: they may run there, so they cannot go back.
	h.answer(Resume, "a", true, "")
	h.answer(Attach, "a", true, "")
	if !h.vm("b").Switched || !h.vm("c").Switched {
		t.Fatal("switch flags")
	}
	h.hostDown("h5")
	h.hostDown("h6")
	h.run(allOK)
	h.wantSeq("a", "prepare@h1", "detach@h1", "launch@h1", "stop@h1", "migrate@h1", "resume@h4(migrated)", "attach@h4", "kill@h1")
	h.wantSeq("b", "prepare@h1", "detach@h1", "launch@h1", "stop@h1", "migrate@h1", "resume@h5(migrated)")
	h.wantSeq("c", "prepare@h2", "detach@h2", "launch@h2", "stop@h2", "migrate@h2", "resume@h6(migrated)")
	r := h.op.Result()
	if r.Outcome != OutcomeMigrated || !reflect.DeepEqual(r.Lost, []string{"b", "c"}) {
		t.Fatalf("result %+v", r)
	}
	if r.VMs[0].Outcome != OutcomeMigrated || r.VMs[0].Host != "h4" ||
		r.VMs[1].Outcome != OutcomeLost || r.VMs[1].Host != "h5" ||
		r.VMs[2].Outcome != OutcomeLost || r.VMs[2].Host != "h6" {
		t.Fatalf("vms %+v", r.VMs)
	}
}

func TestSourceDownSalvage(t *testing.T) {
	vms := []VM{{Name: "a", Host: "h1", Dest: "h4"}, {Name: "b", Host: "h2", Dest: "h5"}}
	for _, bFails := range []bool{false, true} {
		h := start(t, KindEvacuate, vms, Options{})
		h.answerAll(Prepare, true)
		h.answerAll(Detach, true)
		h.answerAll(Launch, true)
		h.answerAll(Stop, true)
		h.answer(Migrate, "a", true, "")
		acts := h.hostDown("h1") // a's transfer is complete: continue at h4
		if got := fmtActs(acts); got != "[a:resume@h4(migrated)]" {
			t.Fatalf("salvage %s", got)
		}
		h.answer(Migrate, "b", !bFails, "boom")
		h.run(allOK)
		h.wantSeq("a", "prepare@h1", "detach@h1", "launch@h1", "stop@h1", "migrate@h1", "resume@h4(migrated)", "attach@h4")
		r := h.op.Result()
		if r.VMs[0].Outcome != OutcomeMigrated || r.VMs[0].Host != "h4" || r.Lost != nil {
			t.Fatalf("result %+v", r)
		}
		if bFails {
			h.wantSeq("b", "prepare@h2", "detach@h2", "launch@h2", "stop@h2", "migrate@h2", "cancel-migrate@h5", "attach@h2", "resume@h2(aborted)")
			if r.Outcome != OutcomeAborted {
				t.Fatalf("outcome %s", r.Outcome)
			}
		} else if r.Outcome != OutcomeMigrated || r.VMs[1].Host != "h5" {
			t.Fatalf("result %+v", r)
		}
	}
}

func TestSourceDownBeforeTransferCompletes(t *testing.T) {
	h := start(t, KindMigrate, mgVMs, Options{})
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Launch, true)
	h.answerAll(Stop, true)
	acts := h.hostDown("h1")
	// a and b are lost; their incoming copies are dropped; c rolls back.
	if got := fmtActs(acts); got != "[a:cancel-migrate@h4 b:cancel-migrate@h5 c:attach@h2]" {
		t.Fatalf("host down %s", got)
	}
	h.run(allOK)
	r := h.op.Result()
	if r.Outcome != OutcomeAborted || !reflect.DeepEqual(r.Lost, []string{"a", "b"}) || r.VMs[2].Outcome != OutcomeAborted {
		t.Fatalf("result %+v", r)
	}
}

func TestLiveMigrate(t *testing.T) {
	opts := Options{Live: true, TransferTimeout: time.Minute}
	t.Run("happy", func(t *testing.T) {
		h := start(t, KindMigrate, mgVMs, opts)
		h.answerAll(Prepare, true)
		h.answerAll(Detach, true)
		acts := h.answerAll(Launch, true)
		if got := fmtActs(acts); got != "[a:migrate@h1 b:migrate@h1]" || !acts[0].Live || !acts[0].Deadline.Equal(t0.Add(time.Minute)) {
			t.Fatalf("live migrate actions %s %+v", got, acts)
		}
		h.run(allOK)
		h.wantSeq("a", "prepare@h1", "detach@h1", "launch@h1", "migrate@h1", "resume@h4(migrated)", "attach@h4", "kill@h1")
		h.wantSeq("c", "prepare@h2", "detach@h2", "attach@h2", "resume@h2(migrated)")
		if h.count(Stop) != 0 || h.op.Result().Outcome != OutcomeMigrated {
			t.Fatal("live migration stopped VMs or failed")
		}
	})
	t.Run("fails", func(t *testing.T) {
		h := start(t, KindMigrate, mgVMs, opts)
		h.answerAll(Prepare, true)
		h.answerAll(Detach, true)
		h.answerAll(Launch, true)
		h.answer(Migrate, "a", true, "")
		h.answer(Migrate, "b", false, "too many dirty pages")
		h.run(allOK)
		// A migrated source is paused: it is resumed, not just told.
		h.wantSeq("a", "prepare@h1", "detach@h1", "launch@h1", "migrate@h1", "cancel-migrate@h4", "attach@h1", "resume@h1(aborted)")
		// c never stopped: its round is aborted.
		h.wantSeq("c", "prepare@h2", "detach@h2", "attach@h2", "abort@h2")
	})
}

func TestStaleAndDuplicateResults(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	pa := h.take(Prepare, "a")
	h.step(resultFor(pa, true, "", h.now))
	before, _ := json.Marshal(h.op)
	stale := []ActionResult{
		resultFor(pa, true, "", h.now),   // duplicate
		resultFor(pa, false, "x", h.now), // duplicate with another verdict
		{ID: ActionID{Op: "op0", VM: "b", Step: Prepare, Attempt: 1}, OK: false},
		{ID: ActionID{Op: "op1", VM: "zz", Step: Prepare, Attempt: 1}, OK: false},
		{ID: ActionID{Op: "op1", VM: "b", Step: Prepare, Attempt: 2}, OK: false},
		{ID: ActionID{Op: "op1", VM: "b", Step: Detach, Attempt: 1}, OK: false},
		{ID: ActionID{Op: "op1", Step: RecordCheckpoint, Attempt: 1}, OK: false},
	}
	for _, r := range stale {
		if acts := h.step(r); len(acts) != 0 {
			t.Fatalf("stale %v emitted %s", r.ID, fmtActs(acts))
		}
	}
	after, _ := json.Marshal(h.op)
	var bo, ao Op
	json.Unmarshal(before, &bo)
	json.Unmarshal(after, &ao)
	if ao.Ignored != len(stale) {
		t.Fatalf("ignored %d, want %d", ao.Ignored, len(stale))
	}
	ao.Ignored = 0
	if !reflect.DeepEqual(bo, ao) {
		t.Fatal("stale results changed the state")
	}
	h.run(allOK)
	// After Done, more results are still harmless.
	h.step(resultFor(pa, true, "", h.now))
	if r := h.op.Result(); r.Outcome != OutcomeCheckpointed || r.Ignored != len(stale)+1 {
		t.Fatalf("result %+v", r)
	}
}

func TestCompensationRetries(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Stop, true)
	h.answer(Save, "b", false, "EIO")
	h.answerAll(Save, true)
	h.answerAll(Attach, true)
	// a: resume fails twice, then works. c: resume keeps failing. b: a resume deadline, then works.
	h.answer(Resume, "a", false, "qmp timeout")
	h.answer(Resume, "a", false, "qmp timeout")
	h.answer(Resume, "a", true, "")
	for i := 0; i < 3; i++ {
		h.answer(Resume, "c", false, "monitor gone")
	}
	h.answer(DeleteArtifacts, "c", true, "")
	h.take(Resume, "b")
	h.tick(ckOpts.StepTimeout)
	h.answer(Resume, "b", true, "")
	h.run(allOK)
	var ids []string
	for _, a := range h.log {
		if a.Type == Resume && a.VM == "a" {
			ids = append(ids, a.ID.String())
		}
	}
	if want := []string{"op1/a/resume/1", "op1/a/resume/2", "op1/a/resume/3"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("ids %v", ids)
	}
	r := h.op.Result()
	if !reflect.DeepEqual(r.Stranded, []string{"c"}) || r.VMs[0].Outcome != OutcomeAborted || r.VMs[1].Outcome != OutcomeAborted ||
		!strings.Contains(r.VMs[2].Error, "resume on h3: monitor gone") {
		t.Fatalf("result %+v", r)
	}
	// c's artifacts are still deleted.
	h.wantSeq("c", "prepare@h3", "detach@h3", "stop@h3", "save@h3", "attach@h3",
		"resume@h3(aborted)", "resume@h3(aborted)", "resume@h3(aborted)", "delete-artifacts@h3")
}

func TestAttachGivenUpStillResumes(t *testing.T) {
	h := start(t, KindCheckpoint, vms3[:1], ckOpts)
	h.run(func(a Action) (verdict, string) {
		if a.Type == Attach {
			return vFail, "no free VF"
		}
		return vOK, ""
	})
	h.wantSeq("a", "prepare@h1", "detach@h1", "stop@h1", "save@h1", "attach@h1", "attach@h1", "attach@h1", "resume@h1(checkpointed)")
	if r := h.op.Result(); r.VMs[0].Outcome != OutcomeCheckpointed || !strings.Contains(r.VMs[0].Error, "no free VF") {
		t.Fatalf("result %+v", r)
	}
}

func TestRecordCheckpointGivenUp(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.run(func(a Action) (verdict, string) {
		if a.Type == RecordCheckpoint {
			return vFail, "catalog down"
		}
		return vOK, ""
	})
	r := h.op.Result()
	if r.Checkpoint != CheckpointComplete || !strings.Contains(r.Error, "catalog down") || h.count(RecordCheckpoint) != 3 {
		t.Fatalf("result %+v", r)
	}
}

func TestCancel(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answerAll(Prepare, true)
	h.step(Cancel{Reason: "operator", Now: h.now})
	if h.op.Phase != PhaseRollback || h.op.Reason != "cancelled: operator" {
		t.Fatalf("phase %s reason %q", h.op.Phase, h.op.Reason)
	}
	h.run(allOK)

	h = start(t, KindCheckpoint, vms3, ckOpts)
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Stop, true)
	h.answerAll(Save, true)
	if acts := h.step(Cancel{Now: h.now}); len(acts) != 0 || h.op.Phase != PhaseResume {
		t.Fatal("cancel after the commit did something")
	}
	h.run(allOK)
	if h.op.Result().Outcome != OutcomeCheckpointed {
		t.Fatal("not checkpointed")
	}
}

func TestNewValidation(t *testing.T) {
	ok := Options{CheckpointID: "ck"}
	for _, c := range []struct {
		name string
		id   string
		kind Kind
		vms  []VM
		opts Options
	}{
		{"no id", "", KindCheckpoint, vms3, ok},
		{"no vms", "op", KindCheckpoint, nil, ok},
		{"bad kind", "op", "suspend", vms3, ok},
		{"no host", "op", KindCheckpoint, []VM{{Name: "a"}}, ok},
		{"dup", "op", KindCheckpoint, []VM{{Name: "a", Host: "h"}, {Name: "a", Host: "h"}}, ok},
		{"no checkpoint id", "op", KindRestart, vms3, Options{}},
		{"live restart", "op", KindRestart, vms3, Options{CheckpointID: "ck", Live: true}},
		{"live rejuvenate", "op", KindRejuvenate, vms3, Options{Live: true}},
		{"bandwidth without live", "op", KindCheckpoint, vms3, Options{CheckpointID: "ck", Bandwidth: 1 << 20}},
		{"bandwidth on a migration", "op", KindMigrate, mgVMs, Options{Live: true, Bandwidth: 1 << 20}},
		{"negative bandwidth", "op", KindCheckpoint, vms3, Options{CheckpointID: "ck", Live: true, Bandwidth: -1}},
		{"freeze on a checkpoint", "op", KindCheckpoint, vms3, Options{CheckpointID: "ck", Freeze: true}},
		{"freeze on a rejuvenate", "op", KindRejuvenate, vms3, Options{Freeze: true}},
		{"nothing moves", "op", KindMigrate, []VM{{Name: "a", Host: "h", Dest: "h"}}, ok},
		{"incoming on a migrate", "op", KindMigrate, []VM{{Name: "a", Host: "h", Dest: "g", Incoming: true}}, ok},
		{"incoming source", "op", KindRelease, []VM{{Name: "a", Host: "h", Dest: "g", Incoming: true}}, ok},
		{"live release", "op", KindRelease, vms3, Options{Live: true}},
	} {
		if _, acts, err := New(c.id, c.kind, "j", c.vms, c.opts, t0); err == nil || acts != nil {
			t.Errorf("%s: err %v, actions %v", c.name, err, acts)
		}
	}
	for _, c := range []struct {
		kind Kind
		opts Options
	}{
		{KindCheckpoint, Options{CheckpointID: "ck", Live: true, Bandwidth: 1 << 20}},
		{KindMigrate, Options{Live: true, Freeze: true}},
		{KindEvacuate, Options{Freeze: true}},
		{KindRejuvenate, Options{}},
		{KindRelease, Options{}},
	} {
		vms := vms3
		if c.kind != KindCheckpoint && c.kind != KindRejuvenate {
			vms = mgVMs
		}
		if _, _, err := New("op", c.kind, "j", vms, c.opts, t0); err != nil {
			t.Errorf("%s %+v: %v", c.kind, c.opts, err)
		}
	}
	o, _, err := New("op", KindMigrate, "j", mgVMs, Options{}, t0)
	if err != nil || o.Opts.PrepareTimeout != DefaultPrepareTimeout || o.Opts.TransferTimeout != DefaultStepTimeout ||
		o.Opts.MaxAttempts != DefaultMaxAttempts {
		t.Fatalf("defaults: %v %+v", err, o.Opts)
	}
}

// Kill the coordinator after every step of a scenario, reload its journal,
// Recover, and finish: the outcome is the one of the uninterrupted run.
func TestRecoverAfterEveryStep(t *testing.T) {
	scenarios := []struct {
		name   string
		kind   Kind
		vms    []VM
		opts   Options
		policy func(a Action) (verdict, string)
	}{
		{"checkpoint", KindCheckpoint, vms3, ckOpts, allOK},
		{"checkpoint save fails", KindCheckpoint, vms3, ckOpts, failOn(Save, "b")},
		{"restart", KindRestart, rsVMs, ckOpts, allOK},
		{"restart fails", KindRestart, rsVMs, ckOpts, failOn(Restore, "c")},
		{"migrate", KindMigrate, mgVMs, Options{}, allOK},
		{"migrate fails", KindMigrate, mgVMs, Options{}, failOn(Migrate, "b")},
		{"live", KindMigrate, mgVMs, Options{Live: true}, allOK},
		{"refused", KindEvacuate, mgVMs, Options{}, failOn(Prepare, "c")},
		{"live checkpoint", KindCheckpoint, vms3, liveOpts, allOK},
		{"live checkpoint fence fails", KindCheckpoint, vms3, liveOpts, failOn(Fence, "b")},
		{"live checkpoint stream fails", KindCheckpoint, vms3, liveOpts, failOn(WaitSave, "c")},
		{"rejuvenate", KindRejuvenate, vms3, Options{}, allOK},
		{"rejuvenate replace fails", KindRejuvenate, vms3, Options{}, failOn(Replace, "a")},
		{"migrate cancel given up", KindMigrate, mgVMs, Options{}, failOnAny(
			failOn(Migrate, "b"), failOn(CancelMigrate, "a"))},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			base := start(t, sc.kind, sc.vms, sc.opts)
			base.run(sc.policy)
			want := base.op.Result()
			for k := 1; k < base.steps; k++ {
				h := start(t, sc.kind, sc.vms, sc.opts)
				for h.steps < k && !h.op.Done() {
					a := h.inflight[0]
					h.inflight = h.inflight[1:]
					v, reason := sc.policy(a)
					h.step(resultFor(a, v == vOK, reason, h.now))
				}
				b, err := json.Marshal(h.op)
				if err != nil {
					t.Fatal(err)
				}
				var o Op
				if err := json.Unmarshal(b, &o); err != nil {
					t.Fatal(err)
				}
				h.op = &o
				// The new driver knows only what Recover gives it.
				h.inflight = nil
				h.after(o.Recover(h.now))
				h.run(sc.policy)
				got := h.op.Result()
				got.Ignored = want.Ignored // superseded answers may or may not arrive
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("crash after step %d:\n got %+v\nwant %+v", k, got, want)
				}
			}
		})
	}
}

var liveOpts = Options{CheckpointID: "ck", Live: true, Bandwidth: 1 << 20}

// failOnAny fails what any of the policies fails.
func failOnAny(policies ...func(a Action) (verdict, string)) func(a Action) (verdict, string) {
	return func(a Action) (verdict, string) {
		for _, p := range policies {
			if v, reason := p(a); v != vOK {
				return v, reason
			}
		}
		return vOK, ""
	}
}

func failOn(t ActionType, vm string) func(a Action) (verdict, string) {
	return func(a Action) (verdict, string) {
		if a.Type == t && a.VM == vm {
			return vFail, "scripted failure"
		}
		return vOK, ""
	}
}

// A VM salvaged at its destination whose destination then dies too is lost.
func TestSalvagedThenDestinationDown(t *testing.T) {
	vms := []VM{{Name: "a", Host: "h1", Dest: "h4"}, {Name: "b", Host: "h2", Dest: "h5"}}
	h := start(t, KindMigrate, vms, Options{})
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Launch, true)
	h.answerAll(Stop, true)
	h.answer(Migrate, "a", true, "")
	h.hostDown("h1")
	h.hostDown("h4") // a's Attach@h4 was outstanding, its Resume never sent
	h.run(allOK)
	r := h.op.Result()
	if !reflect.DeepEqual(r.Lost, []string{"a"}) || r.Outcome != OutcomeAborted || r.VMs[1].Outcome != OutcomeAborted {
		t.Fatalf("result %+v", r)
	}
}

// A save reported OK without a digest does not count as saved.
func TestSaveWithoutDigest(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	h.answerAll(Launch, true)
	h.answerAll(Stop, true)
	a := h.take(Save, "a")
	h.step(ActionResult{ID: a.ID, OK: true, Now: h.now})
	h.run(allOK)
	if r := h.op.Result(); r.Checkpoint != CheckpointFailed || !strings.Contains(r.Reason, "no digest") {
		t.Fatalf("result %+v", r)
	}
}

// HostDown of an unrelated or unknown host changes nothing but the list.
func TestHostDownUnrelated(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	if acts := h.hostDown("h99"); len(acts) != 0 || h.op.Phase != PhasePrepare {
		t.Fatalf("unrelated host down: %s", fmtActs(acts))
	}
	h.hostDown("")
	h.hostDown("h99")
	if !reflect.DeepEqual(h.op.Down, []string{"h99"}) {
		t.Fatalf("down %v", h.op.Down)
	}
	h.run(allOK)
}

// Unmarshalling into an Op that was in use resets its derived state.
func TestUnmarshalIntoUsedOp(t *testing.T) {
	h := start(t, KindCheckpoint, vms3, ckOpts)
	b, _ := json.Marshal(h.op) // three prepares outstanding
	h.run(allOK)
	if err := json.Unmarshal(b, h.op); err != nil {
		t.Fatal(err)
	}
	if got := fmtActs(h.op.Recover(h.now)); got != "[a:prepare@h1 b:prepare@h2 c:prepare@h3]" {
		t.Fatalf("recover %s", got)
	}
	if h.op.outstanding != 3 || len(h.op.index) != 3 {
		t.Fatalf("derived state: %d outstanding", h.op.outstanding)
	}
}

package coord_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
)

// chaosRecord is one operation of the randomized fault test as its caller
// (the CLI, given every replica's address) saw it.
type chaosRecord struct {
	Seq    int
	Args   []string
	Faults []string        // faults injected while it ran
	Res    *machine.Result // nil: no result came back (its leader died)
	Err    string          // the CLI's error, if any
}

// chaosFinal is the coordinators' final record, read from the store (via
// the leader) once nothing runs: every operation and every checkpoint.
type chaosFinal struct {
	Ops         []coord.OpView
	Checkpoints []coord.Checkpoint
	// Files counts the VM directories a checkpoint left on disk.
	Files func(id string) int
}

// kindOutcome is the outcome of an operation of kind k past its commit
// point.
var kindOutcome = map[machine.Kind]string{
	machine.KindCheckpoint: machine.OutcomeCheckpointed, machine.KindMigrate: machine.OutcomeMigrated,
	machine.KindEvacuate: machine.OutcomeMigrated, machine.KindRestart: machine.OutcomeRestored,
	machine.KindRejuvenate: machine.OutcomeRejuvenated,
}

// checkHistory returns every violation of the history against the final
// record: an operation both committed and rolled back (in the store, or
// the caller told one thing and the store keeping the other), an
// operation still running or never finished, a checkpoint ID used twice
// or claimed by two operations, a checkpoint whose status disagrees with
// its operation's report, a failed checkpoint that left files.
func checkHistory(hist []chaosRecord, fin chaosFinal) []string {
	var bad []string
	byID := map[string]coord.OpView{}
	for _, op := range fin.Ops {
		if _, dup := byID[op.ID]; dup {
			bad = append(bad, fmt.Sprintf("operation ID %s stored twice", op.ID))
		}
		byID[op.ID] = op
		bad = append(bad, checkStoredOp(op)...)
	}
	for _, r := range hist {
		if r.Res == nil || r.Res.Op == "" {
			continue
		}
		bad = append(bad, checkToldOp(r, byID)...)
	}
	return append(bad, checkCheckpoints(fin, byID)...)
}

// checkStoredOp: an ended operation whose commit flag and outcome agree.
func checkStoredOp(op coord.OpView) []string {
	res := op.Result
	switch {
	case op.Running:
		return []string{fmt.Sprintf("operation %s (%s) still runs", op.ID, op.Kind)}
	case res == nil || !res.Done:
		return []string{fmt.Sprintf("operation %s (%s) never finished: %+v", op.ID, op.Kind, res)}
	case res.Committed != op.Committed:
		return []string{fmt.Sprintf("operation %s: committed %v in its report, %v in its record", op.ID,
			res.Committed, op.Committed)}
	case res.Committed && res.Outcome == machine.OutcomeAborted:
		return []string{fmt.Sprintf("operation %s (%s) both committed and rolled back", op.ID, op.Kind)}
	case !res.Committed && res.Outcome == kindOutcome[op.Kind]:
		return []string{fmt.Sprintf("operation %s (%s) is %s without its commit point", op.ID, op.Kind, res.Outcome)}
	}
	return nil
}

// checkToldOp: what the caller was told is what the store keeps.
func checkToldOp(r chaosRecord, byID map[string]coord.OpView) []string {
	told := r.Res
	op, ok := byID[told.Op]
	args := strings.Join(r.Args, " ")
	switch {
	case !ok:
		return []string{fmt.Sprintf("#%d %s: told of operation %s, which the store does not have", r.Seq, args, told.Op)}
	case !told.Done || op.Result == nil:
		return nil
	case told.Committed != op.Result.Committed || told.Outcome != op.Result.Outcome:
		return []string{fmt.Sprintf("#%d %s: told %s (committed %v), the store keeps %s (committed %v)", r.Seq, args,
			told.Outcome, told.Committed, op.Result.Outcome, op.Result.Committed)}
	case told.CheckpointID != op.Result.CheckpointID || told.Checkpoint != op.Result.Checkpoint:
		return []string{fmt.Sprintf("#%d %s: told checkpoint %s %s, the store keeps %s %s", r.Seq, args,
			told.CheckpointID, told.Checkpoint, op.Result.CheckpointID, op.Result.Checkpoint)}
	}
	return nil
}

// checkCheckpoints: one checkpoint per ID, one operation per checkpoint,
// no checkpoint left in progress, status as its operation reported, and
// a failed checkpoint's files gone.
func checkCheckpoints(fin chaosFinal, byID map[string]coord.OpView) []string {
	var bad []string
	claimed := map[string]string{}
	for _, op := range fin.Ops {
		if op.Kind != machine.KindCheckpoint || op.Result == nil || op.Result.CheckpointID == "" {
			continue
		}
		id := op.Result.CheckpointID
		if other, dup := claimed[id]; dup {
			bad = append(bad, fmt.Sprintf("checkpoint ID %s used by operations %s and %s", id, other, op.ID))
		}
		claimed[id] = op.ID
	}
	seen := map[string]bool{}
	for _, ck := range fin.Checkpoints {
		if seen[ck.ID] {
			bad = append(bad, fmt.Sprintf("checkpoint ID %s listed twice", ck.ID))
		}
		seen[ck.ID] = true
		op, ok := byID[ck.Op]
		switch {
		case ck.Status == "in-progress":
			bad = append(bad, fmt.Sprintf("checkpoint %s still in progress", ck.ID))
		case !ok || op.Result == nil:
			bad = append(bad, fmt.Sprintf("checkpoint %s: its operation %q is not stored", ck.ID, ck.Op))
		case op.Result.CheckpointID != ck.ID:
			bad = append(bad, fmt.Sprintf("checkpoint %s: its operation %s reports checkpoint %q", ck.ID, ck.Op,
				op.Result.CheckpointID))
		case op.Result.Checkpoint != ck.Status:
			bad = append(bad, fmt.Sprintf("checkpoint %s is %s, its operation %s reports %s", ck.ID, ck.Status, ck.Op,
				op.Result.Checkpoint))
		}
		if ck.Status == machine.CheckpointFailed && fin.Files != nil && fin.Files(ck.ID) != 0 {
			bad = append(bad, fmt.Sprintf("failed checkpoint %s left %d directories", ck.ID, fin.Files(ck.ID)))
		}
	}
	return bad
}

// The checker finds each kind of violation in a made-up history, and
// none in a consistent one.
func TestHAHistoryChecker(t *testing.T) {
	done := func(id string, k machine.Kind, committed bool, outcome, ckID, ck string) coord.OpView {
		return coord.OpView{ID: id, Kind: k, Committed: committed, Result: &machine.Result{Op: id, Kind: k, Done: true,
			Committed: committed, Outcome: outcome, CheckpointID: ckID, Checkpoint: ck}}
	}
	good := func() chaosFinal {
		return chaosFinal{Ops: []coord.OpView{
			done("o1", machine.KindCheckpoint, true, machine.OutcomeCheckpointed, "c1", "complete"),
			done("o2", machine.KindCheckpoint, false, machine.OutcomeAborted, "c2", "failed"),
			done("o3", machine.KindMigrate, true, machine.OutcomeMigrated, "", ""),
		}, Checkpoints: []coord.Checkpoint{{ID: "c1", Op: "o1", Status: "complete"}, {ID: "c2", Op: "o2", Status: "failed"}},
			Files: func(string) int { return 0 }}
	}
	told := func(f chaosFinal, i int) chaosRecord {
		r := *f.Ops[i].Result
		return chaosRecord{Seq: i, Args: []string{string(r.Kind)}, Res: &r}
	}
	f := good()
	if bad := checkHistory([]chaosRecord{told(f, 0), told(f, 1), {Seq: 3}}, f); len(bad) != 0 {
		t.Fatalf("a consistent history: %v", bad)
	}
	for name, tc := range map[string]struct {
		mutate func(*chaosFinal, *[]chaosRecord)
		want   string
	}{
		"committed and rolled back": {func(f *chaosFinal, _ *[]chaosRecord) { f.Ops[2].Result.Outcome = machine.OutcomeAborted }, "both committed and rolled back"},
		"told committed, stored aborted": {func(f *chaosFinal, h *[]chaosRecord) {
			f.Ops[0].Result.Committed, f.Ops[0].Committed, f.Ops[0].Result.Outcome = false, false, machine.OutcomeAborted
		}, "the store keeps aborted"},
		"checkpoint ID twice": {func(f *chaosFinal, _ *[]chaosRecord) { f.Ops[1].Result.CheckpointID = "c1" }, "used by operations o1 and o2"},
		"listed twice":        {func(f *chaosFinal, _ *[]chaosRecord) { f.Checkpoints[1].ID = "c1" }, "listed twice"},
		"still running":       {func(f *chaosFinal, _ *[]chaosRecord) { f.Ops[2].Running = true }, "still runs"},
		"unknown op":          {func(f *chaosFinal, h *[]chaosRecord) { (*h)[0].Res.Op = "o9" }, "does not have"},
		"failed left files":   {func(f *chaosFinal, _ *[]chaosRecord) { f.Files = func(string) int { return 2 } }, "left 2 directories"},
		"in progress":         {func(f *chaosFinal, _ *[]chaosRecord) { f.Checkpoints[0].Status = "in-progress" }, "still in progress"},
	} {
		f := good()
		h := []chaosRecord{told(f, 0), told(f, 1)}
		tc.mutate(&f, &h)
		bad := checkHistory(h, f)
		if !strings.Contains(strings.Join(bad, "\n"), tc.want) {
			t.Errorf("%s: want a violation %q, got %v", name, tc.want, bad)
		}
	}
}

package run_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/coord/run"
)

// heldExecutor answers every action at once, except those of type hold:
// each of them is announced on held and answered only once release is
// closed.
type heldExecutor struct {
	hold    machine.ActionType
	held    chan machine.Action
	release chan struct{}
}

func (x *heldExecutor) Execute(ctx context.Context, a machine.Action) machine.Event {
	if a.Type == x.hold {
		x.held <- a
		select {
		case <-x.release:
		case <-ctx.Done():
		}
	}
	return machine.ActionResult{ID: a.ID, OK: true, Digest: "d-" + a.VM, Now: time.Now()}
}

// cancelAt drives a two-VM checkpoint and delivers a Cancel through the
// Inbox once both VMs' action of type at is out.
func cancelAt(t *testing.T, at machine.ActionType) machine.Result {
	t.Helper()
	vms := []machine.VM{{Name: "a", Host: "h1"}, {Name: "b", Host: "h2"}}
	op, acts, err := machine.New("op1", machine.KindCheckpoint, "j", vms, machine.Options{CheckpointID: "ck"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	x := &heldExecutor{hold: at, held: make(chan machine.Action, 2), release: make(chan struct{})}
	inbox := make(chan machine.Event, 1)
	go func() {
		<-x.held
		<-x.held
		inbox <- machine.Cancel{Reason: "test", Now: time.Now()}
		// The machine gave up waiting for the held actions (rollback) or
		// waits for them (past the commit): answer them late either way.
		time.Sleep(50 * time.Millisecond)
		close(x.release)
	}()
	res, err := run.Drive(context.Background(), op, acts, x, run.Hooks{Journal: func(*machine.Op) error { return nil }, Inbox: inbox})
	if err != nil || !res.Done {
		t.Fatalf("drive: %+v %v", res, err)
	}
	return res
}

// A Cancel before the commit point (both guests in Prepare) rolls the
// checkpoint back, and says it was cancelled.
func TestInboxCancelBeforeCommitRollsBack(t *testing.T) {
	res := cancelAt(t, machine.Prepare)
	if res.Committed || res.Outcome != machine.OutcomeAborted || !strings.HasPrefix(res.Reason, "cancelled: test") ||
		res.Checkpoint != machine.CheckpointFailed {
		t.Fatalf("cancel in prepare: %+v", res)
	}
}

// A Cancel after the commit point (every VM saved, Attach out) changes
// nothing: the checkpoint completes.
func TestInboxCancelAfterCommitFinishes(t *testing.T) {
	res := cancelAt(t, machine.Attach)
	if !res.Committed || res.Outcome != machine.OutcomeCheckpointed || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("cancel after the commit: %+v", res)
	}
}

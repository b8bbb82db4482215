package run

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// journalSpy keeps what the last journal write held: the actions a
// recovered operation would know were sent.
type journalSpy struct {
	mu      sync.Mutex
	writes  int
	pending map[machine.ActionID]bool
	last    machine.Op
}

func (j *journalSpy) journal(op *machine.Op) error {
	data, err := json.Marshal(op)
	if err != nil {
		return err
	}
	var cp machine.Op
	if err := json.Unmarshal(data, &cp); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.writes++
	j.last = cp
	j.pending = map[machine.ActionID]bool{}
	for _, v := range cp.VMs {
		for _, a := range []*machine.Action{v.Pending, v.Side} {
			if a != nil {
				j.pending[a.ID] = true
			}
		}
	}
	if cp.Record != nil {
		j.pending[cp.Record.ID] = true
	}
	return nil
}

func (j *journalSpy) journaled(id machine.ActionID) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.pending[id]
}

// A job checkpoint of several VMs: every action is in the journal before
// it is executed, the end is journaled, and a step that only takes in an
// answer (one VM of four through a phase) is not written.
func TestJournalBeforeEveryActionNotAfterEveryAnswer(t *testing.T) {
	var vms []machine.VM
	for i := range 4 {
		vms = append(vms, machine.VM{Name: fmt.Sprintf("vm%d", i), Host: fmt.Sprintf("h%d", i)})
	}
	op, acts, err := machine.New("op1", machine.KindCheckpoint, "job", vms, machine.Options{CheckpointID: "c1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	spy := &journalSpy{}
	var mu sync.Mutex
	executed, unjournaled := 0, 0
	ex := ExecutorFunc(func(ctx context.Context, a machine.Action) machine.Event {
		mu.Lock()
		executed++
		if !spy.journaled(a.ID) {
			unjournaled++
			t.Errorf("action %s executed before the journal held it", a.ID)
		}
		mu.Unlock()
		return machine.ActionResult{ID: a.ID, OK: true, Digest: "sha256:x", Now: time.Now()}
	})
	res, err := Drive(context.Background(), op, acts, ex, Hooks{Journal: spy.journal})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Done || !res.Committed {
		t.Fatalf("result %+v, want done and committed", res)
	}
	if !spy.last.Done() {
		t.Errorf("the last journal write is in phase %s, want done", spy.last.Phase)
	}
	// One write per Step would be executed+1 (each answer is a Step).
	if spy.writes > executed/2 {
		t.Errorf("%d journal writes for %d actions: a write per answer", spy.writes, executed)
	}
	t.Logf("%d actions, %d journal writes", executed, spy.writes)
}

package run

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
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

// A journal write that takes long is logged as such, once per write that
// does, naming the phase whose actions waited for it; a quick one is only
// a debug record.
func TestSlowJournalWriteIsLogged(t *testing.T) {
	vms := []machine.VM{{Name: "vm0", Host: "h0"}}
	op, acts, err := machine.New("op1", machine.KindCheckpoint, "job", vms, machine.Options{CheckpointID: "c1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	writes := 0
	journal := func(*machine.Op) error {
		writes++
		if writes == 2 {
			time.Sleep(slowJournal + 20*time.Millisecond)
		}
		return nil
	}
	ex := ExecutorFunc(func(ctx context.Context, a machine.Action) machine.Event {
		return machine.ActionResult{ID: a.ID, OK: true, Digest: "sha256:x", Now: time.Now()}
	})
	if _, err := Drive(context.Background(), op, acts, ex, Hooks{Journal: journal, Log: log}); err != nil {
		t.Fatal(err)
	}
	var slow, quick int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var r struct{ Level, Msg, Phase string }
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch {
		case strings.HasPrefix(r.Msg, "journal write slow"):
			slow++
			if r.Level != "WARN" || r.Phase == "" {
				t.Errorf("slow write logged as %+v, want a warning naming the phase", r)
			}
		case r.Msg == "journal written":
			quick++
		}
	}
	if slow != 1 || quick != writes-1 {
		t.Errorf("%d slow and %d quick journal records for %d writes (one slow), want 1 and %d\n%s", slow, quick, writes, writes-1, logs.String())
	}
}

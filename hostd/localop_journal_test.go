package hostd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// A direct operation's journal: the first record replaces what a previous
// hostd left, the next ones are appended, the last complete one is in
// force (a record torn by a crash is not), and the end writes nothing (the
// journal is removed next).
func TestDirectJournalLastCompleteRecord(t *testing.T) {
	h := &Host{cfg: Config{StateDir: t.TempDir()}}
	d, acts, err := h.newDirect(machine.KindCheckpoint, machine.VM{Name: "v"}, h.opOptions(filepath.Join(t.TempDir(), "ck")))
	if err != nil {
		t.Fatal(err)
	}
	path := h.directPath(d.Op.ID)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, []byte("left by a previous hostd\n"), 0o600)
	if err := h.journalDirect(d); err != nil {
		t.Fatal(err)
	}
	defer d.journal.Close()
	phases := []machine.Phase{d.Op.Phase}
	for range 2 {
		acts = d.Op.Step(machine.ActionResult{ID: acts[0].ID, OK: true, Now: time.Now()})
		if err := h.journalDirect(d); err != nil {
			t.Fatal(err)
		}
		phases = append(phases, d.Op.Phase)
	}
	data, _ := os.ReadFile(path)
	if n := bytes.Count(data, []byte("\n")); n != 3 {
		t.Fatalf("journal has %d records, want 3:\n%s", n, data)
	}
	got, err := readJournal(path)
	if err != nil || got.Op.Phase != phases[2] {
		t.Fatalf("read %+v, %v; want the last record (phase %s)", got, err, phases[2])
	}

	// A crash in the middle of the next record.
	acts = d.Op.Step(machine.ActionResult{ID: acts[0].ID, OK: true, Now: time.Now()})
	if err := h.journalDirect(d); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(path)
	os.WriteFile(path, data[:len(data)-len(data)/8], 0o600)
	if got, err = readJournal(path); err != nil || got.Op.Phase != phases[2] {
		t.Fatalf("after a torn record: read %+v, %v; want the one before (phase %s)", got, err, phases[2])
	}

	d.Op.Step(machine.Cancel{Reason: "test", Now: time.Now()})
	for !d.Op.Done() {
		p := pendingActions(d.Op)
		if len(p) == 0 {
			t.Fatalf("not done and nothing pending (phase %s)", d.Op.Phase)
		}
		d.Op.Step(machine.ActionResult{ID: p[0].ID, OK: true, Now: time.Now()})
	}
	before, _ := os.ReadFile(path)
	if err := h.journalDirect(d); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("the operation's end was written to its journal (it is removed instead)")
	}
}

func pendingActions(op *machine.Op) []machine.Action {
	var out []machine.Action
	for _, v := range op.VMs {
		for _, a := range []*machine.Action{v.Pending, v.Side} {
			if a != nil {
				out = append(out, *a)
			}
		}
	}
	if op.Record != nil {
		out = append(out, *op.Record)
	}
	return out
}

// The steps of a direct operation this hostd drives leave the VM's
// runtime state file alone (their answers and closing are in the
// operation's journal); a coordinator's steps are written there; and a
// change that changes nothing writes nothing.
func TestDirectStepsWriteNoRuntimeState(t *testing.T) {
	h := newHostAt(t, t.TempDir())
	vm := h.newVM("v1", Spec{Name: "v1"})
	os.MkdirAll(vm.dir, 0o700)
	vm.saveRuntime()
	h.vms["v1"] = vm
	rtFile := filepath.Join(vm.dir, fileRuntime)
	// An atomic write replaces the file: a link keeps the one before
	// alive (its inode cannot be reused) to compare with.
	probe := rtFile + ".probe"
	written := func() func() bool {
		os.Remove(probe)
		if err := os.Link(rtFile, probe); err != nil {
			t.Fatal(err)
		}
		return func() bool {
			before, err1 := os.Stat(probe)
			after, err2 := os.Stat(rtFile)
			return err1 != nil || err2 != nil || !os.SameFile(before, after)
		}
	}
	ctx := context.Background()
	gone := filepath.Join(t.TempDir(), "gone")

	directBusy.Store(directKey{h, "v1"}, "dop")
	changed := written()
	if res := h.Step(ctx, StepRequest{ID: "dop/v1/delete-artifacts/1", Op: "dop", Kind: StepDeleteArtifacts, VM: "v1",
		Save: &SaveArgs{Dir: gone}}); !res.OK {
		t.Fatalf("closing step: %+v", res)
	}
	directBusy.Delete(directKey{h, "v1"})
	if changed() {
		t.Errorf("a direct operation's step wrote the runtime state: %+v", vm.rt)
	}
	if !h.isClosed("v1", "dop") {
		t.Errorf("the direct operation's closing step did not close it")
	}

	changed = written()
	h.dropLease("v1") // there is none
	if changed() {
		t.Errorf("dropping no lease wrote the runtime state")
	}

	changed = written()
	h.Step(ctx, StepRequest{ID: "cop/v1/delete-artifacts/1", Op: "cop", Kind: StepDeleteArtifacts, VM: "v1",
		Save: &SaveArgs{Dir: gone}})
	if !changed() || len(vm.rt.Answers) != 1 || len(vm.rt.ClosedOps) != 1 || vm.rt.ClosedOps[0] != "cop" {
		t.Errorf("a coordinator's step: runtime state %+v, want its answer and closing", vm.rt)
	}
}

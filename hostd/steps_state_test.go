package hostd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// newHostAt opens a Host on stateDir (no QEMU is started by it).
func newHostAt(t *testing.T, stateDir string) *Host {
	t.Helper()
	h, err := New(Config{StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		for _, hp := range []bool{false, true} {
			os.Remove(filepath.Dir(h.ramPath(Spec{Name: "x", HugePages: hp})))
		}
	})
	return h
}

// What a VM's runtime state keeps of the steps is what the next Host on
// the same state dir knows: answers, closed operations, the lease, and a
// stream in flight, which it finds lost (files removed) unless its
// manifest was written.
func TestStepMemoryOutlivesTheHost(t *testing.T) {
	stateDir := t.TempDir()
	ckDir := t.TempDir()
	lost, done := filepath.Join(ckDir, "lost"), filepath.Join(ckDir, "done")
	for _, d := range []string{lost, done} {
		os.MkdirAll(d, 0o700)
		os.WriteFile(filepath.Join(d, stateName), []byte("partial"), 0o600)
	}
	os.WriteFile(filepath.Join(done, manifestName), []byte("{}"), 0o600)

	h1 := newHostAt(t, stateDir)
	for _, name := range []string{"v1", "v2"} {
		vm := h1.newVM(name, Spec{Name: name})
		os.MkdirAll(vm.dir, 0o700)
		if err := writeJSON(filepath.Join(vm.dir, fileSpec), vm.spec); err != nil {
			t.Fatal(err)
		}
		h1.vms[name] = vm
	}
	// A closing step answered and closing its operation; more answers
	// than a VM keeps.
	ctx := context.Background()
	gone := filepath.Join(ckDir, "gone")
	del := StepRequest{ID: "op1/v1/delete-artifacts/1", Op: "op1", Kind: StepDeleteArtifacts, VM: "v1",
		Save: &SaveArgs{Dir: gone}}
	first := h1.Step(ctx, del)
	for i := range maxAnswers + 5 {
		h1.Step(ctx, StepRequest{ID: "op9/v2/delete-artifacts/" + strconv.Itoa(i), Op: "op9",
			Kind: StepDeleteArtifacts, VM: "v2", Save: &SaveArgs{Dir: gone}})
	}
	h1.setLease("v1", "op2", time.Hour, "")
	h1.vms["v1"].streamStarts("op2", lost)
	h1.vms["v2"].streamStarts("op3", done)
	h1.Close()

	h2 := newHostAt(t, stateDir)
	os.MkdirAll(gone, 0o700)
	if got := h2.Step(ctx, del); got != first {
		t.Errorf("a step re-sent to the next host: %+v, want the first answer %+v", got, first)
	}
	if _, err := os.Stat(gone); err != nil {
		t.Errorf("the re-sent step ran again: %v", err)
	}
	if got := h2.Step(ctx, StepRequest{ID: "op1/v1/stop/2", Op: "op1", Kind: StepStop, VM: "v1"}); got.OK ||
		got.Code != "invalid_state" {
		t.Errorf("a forward step of an operation closed before the restart: %+v", got)
	}
	if l := h2.steps.leases["v1"]; l == nil || l.Op != "op2" {
		t.Errorf("lease after the restart: %+v", l)
	}
	if n := len(h2.vms["v2"].rt.Answers); n != maxAnswers {
		t.Errorf("v2 keeps %d answers, want the last %d", n, maxAnswers)
	}
	if _, err := os.Stat(lost); !os.IsNotExist(err) {
		t.Errorf("the lost stream's files: %v", err)
	}
	if err := h2.vms["v1"].lostStream(lost); !errors.Is(err, ErrStreamLost) {
		t.Errorf("lostStream: %v", err)
	}
	if got := h2.Step(ctx, StepRequest{ID: "op2/v1/wait-save/1", Op: "op2", Kind: StepWaitSave, VM: "v1",
		Save: &SaveArgs{Dir: lost}}); got.OK {
		t.Errorf("wait-save of a lost stream: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(done, manifestName)); err != nil || h2.vms["v2"].rt.Stream != nil {
		t.Errorf("a stream whose manifest was written: %v, record %+v", err, h2.vms["v2"].rt.Stream)
	}
}

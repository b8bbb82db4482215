package hostd

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// A direct checkpoint journaled with its save under way (its hostd died
// there) is rolled back by the next hostd: its partial directory goes and
// its journal with it. (With a VM that is gone, the closing steps fail and
// are given up: the operation still ends.)
func TestRecoveredDirectCheckpointRollsBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("hostd.New needs root")
	}
	state := t.TempDir()
	cfg := Config{StateDir: state, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h0, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ck := filepath.Join(t.TempDir(), "ck")
	d, acts, err := h0.newDirect(machine.KindCheckpoint, machine.VM{Name: "gone"}, h0.opOptions(ck))
	if err != nil {
		t.Fatal(err)
	}
	d.Dir = ck
	for d.Op.Phase != machine.PhaseSave {
		if len(acts) != 1 || acts[0].Host != localHost {
			t.Fatalf("phase %s: actions %+v", d.Op.Phase, acts)
		}
		acts = d.Op.Step(machine.ActionResult{ID: acts[0].ID, OK: true, Now: time.Now()})
	}
	if err := h0.journalDirect(d); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(ck, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ck, stateName), []byte("partial"), 0o600)
	h0.Close()

	h1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ops, _ := filepath.Glob(filepath.Join(state, "ops", "*.json"))
		if len(ops) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the recovered operation did not end: %v", ops)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(ck); !os.IsNotExist(err) {
		t.Fatalf("the partial checkpoint survived the recovery: %v", err)
	}
}

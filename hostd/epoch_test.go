package hostd

import (
	"context"
	"strings"
	"testing"
)

// Steps carry the coordinator leader's epoch: a host obeys the highest it
// has seen and refuses older ones with stale_epoch, also after a restart
// (the epoch is kept in its state dir); steps without an epoch (a single
// coordinator) are not fenced.
func TestStepFromStaleEpochRefused(t *testing.T) {
	dir := t.TempDir()
	h := newHostAt(t, dir)
	step := func(h *Host, id string, epoch int64) StepResult {
		return h.Step(context.Background(), StepRequest{ID: id, Op: "op-1", Kind: StepAbort, VM: "nosuchvm", Epoch: epoch})
	}
	if r := step(h, "s1", 5); r.Code == "stale_epoch" {
		t.Fatalf("first epoch refused: %+v", r)
	}
	r := step(h, "s2", 3)
	if r.OK || r.Code != "stale_epoch" || !strings.Contains(r.Reason, ErrStaleEpoch.Error()) {
		t.Fatalf("a step of epoch 3 after epoch 5: %+v, want stale_epoch", r)
	}
	if r := step(h, "s3", 0); r.Code == "stale_epoch" {
		t.Fatalf("a step without epoch was fenced: %+v", r)
	}
	h.Close()
	h2 := newHostAt(t, dir)
	if r := step(h2, "s4", 4); r.Code != "stale_epoch" {
		t.Fatalf("after a restart, a step of epoch 4: %+v, want stale_epoch", r)
	}
	if r := step(h2, "s5", 7); r.Code == "stale_epoch" {
		t.Fatalf("a newer epoch refused: %+v", r)
	}
	if r := step(h2, "s6", 5); r.Code != "stale_epoch" {
		t.Fatalf("epoch 5 after epoch 7: %+v, want stale_epoch", r)
	}
}

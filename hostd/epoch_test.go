package hostd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
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

// A deposed coordinator cannot keep an operation's leases alive either: a
// renewal from an older epoch is refused, one from the current epoch (or
// without one) is not.
func TestLeaseRenewalFromStaleEpochRefused(t *testing.T) {
	h := newHostAt(t, t.TempDir())
	if r := h.Step(context.Background(), StepRequest{ID: "s1", Op: "op-1", Kind: StepAbort, VM: "nosuchvm", Epoch: 5}); r.Code == "stale_epoch" {
		t.Fatalf("first epoch refused: %+v", r)
	}
	if _, err := h.RenewLeases("op-1", time.Minute, 3); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("renewal of epoch 3 after epoch 5: %v, want ErrStaleEpoch", err)
	}
	for _, epoch := range []int64{5, 0} {
		if _, err := h.RenewLeases("op-1", time.Minute, epoch); err != nil {
			t.Fatalf("renewal of epoch %d: %v", epoch, err)
		}
	}
}

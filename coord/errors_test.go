package coord

import (
	"errors"
	"fmt"
	"testing"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// A failed operation's error names what a caller acts on: a guest that
// did not get ready, VMs lost or stranded (even when the rest succeeded),
// or a plain rollback; each stays an ErrFailed, and each has its own code.
func TestRefineClassifiesOperations(t *testing.T) {
	failed := fmt.Errorf("checkpoint of job %q: %w: x", "j", ErrFailed)
	guest := fmt.Sprintf("vm a: prepare: vm \"a\": %v: no handshake", hostd.ErrGuest)
	for _, tc := range []struct {
		name string
		res  any
		err  error
		want error
		code string
	}{
		{"guest refused", machine.Result{Op: "o", Done: true, Outcome: machine.OutcomeAborted, Reason: guest}, failed, ErrGuestRefused, "guest_refused"},
		{"guest deadline", machine.Result{Op: "o", Done: true, Outcome: machine.OutcomeAborted, Reason: "vm a: prepare: deadline"}, failed, ErrGuestRefused, "guest_refused"},
		{"vm missing at prepare", machine.Result{Op: "o", Done: true, Outcome: machine.OutcomeAborted, Reason: "vm a: prepare: vm \"a\": not found"}, failed, ErrFailed, "failed"},
		{"save failed", machine.Result{Op: "o", Done: true, Outcome: machine.OutcomeAborted, Reason: "vm a: save: disk full"}, failed, ErrFailed, "failed"},
		{"lost after commit", machine.Result{Op: "o", Done: true, Outcome: machine.OutcomeMigrated, Lost: []string{"b"}}, nil, ErrNeedsOperator, "needs_operator"},
		{"evacuate, one stranded", []machine.Result{{Op: "o"}, {Op: "p", Done: true, Stranded: []string{"c"}}}, nil, ErrNeedsOperator, "needs_operator"},
		{"journal lost mid-way", machine.Result{Op: "o", Outcome: machine.OutcomeAborted}, failed, ErrNeedsOperator, "needs_operator"},
		{"ok", machine.Result{Op: "o", Done: true, Outcome: machine.OutcomeMigrated}, nil, nil, ""},
		{"refused before it began", machine.Result{}, fmt.Errorf("job: %w", ErrBusy), ErrBusy, "busy"},
	} {
		got := refine(tc.res, tc.err)
		if tc.want == nil {
			if got != nil {
				t.Errorf("%s: %v, want nil", tc.name, got)
			}
			continue
		}
		if !errors.Is(got, tc.want) || codes.Of(got) != tc.code {
			t.Errorf("%s: %v (code %s), want %v (code %s)", tc.name, got, codes.Of(got), tc.want, tc.code)
		}
		if tc.want != ErrBusy && !errors.Is(got, ErrFailed) {
			t.Errorf("%s: %v is not an ErrFailed", tc.name, got)
		}
	}
	// The client gets the same sentinel back, and ErrFailed with it.
	dec := codes.Decode(&jsonapi.Error{Code: "guest_refused", Message: "m"})
	if !errors.Is(dec, ErrGuestRefused) || !errors.Is(dec, ErrFailed) {
		t.Errorf("decoded guest_refused: %v is not ErrGuestRefused and ErrFailed", dec)
	}
}

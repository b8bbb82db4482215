package coord

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Sentinel errors of the coordinator, wrapped with context and checked
// with errors.Is. The first four are the ones hostd shares (jsonapi).
var (
	ErrNotFound   = jsonapi.ErrNotFound
	ErrExists     = jsonapi.ErrExists
	ErrInvalid    = jsonapi.ErrInvalid
	ErrBusy       = jsonapi.ErrBusy
	ErrFailed     = errors.New("operation failed")
	ErrNoCapacity = errors.New("no host with room")
	// ErrCordoned: a placement on a cordoned host was refused (an
	// ErrInvalid: on the wire and in exit codes it is a refused request).
	ErrCordoned = fmt.Errorf("host is cordoned: %w", ErrInvalid)
	// ErrGuestRefused: the operation rolled back because a guest did not
	// reach its safe point (it refused, or its deadline passed). It is an
	// ErrFailed.
	ErrGuestRefused error = failure("a guest did not get ready")
	// ErrNeedsOperator: the operation ended with VMs lost (their host went
	// down) or stranded (a closing step kept failing), or its outcome is
	// not journaled: an operator must look. It is an ErrFailed.
	ErrNeedsOperator error = failure("needs an operator")
)

// codes gives every sentinel its wire name and HTTP status; the
// refinements of ErrFailed come before it.
var codes = slices.Concat(jsonapi.Shared, jsonapi.Codes{
	{Code: "guest_refused", Err: ErrGuestRefused},
	{Code: "needs_operator", Err: ErrNeedsOperator},
	{Code: "failed", Err: ErrFailed},
	{Code: "no_capacity", Err: ErrNoCapacity},
	{Code: "not_leader", Err: ErrNotLeader, Status: http.StatusMisdirectedRequest},
})

// refine gives an operation's error the sentinel a caller acts on: VMs
// lost or stranded (also when the operation otherwise succeeded) need an
// operator; a rollback caused by a guest's prepare is the guest's refusal.
func refine(res any, err error) error {
	var rs []machine.Result
	switch r := res.(type) {
	case machine.Result:
		rs = []machine.Result{r}
	case []machine.Result:
		rs = r
	}
	for _, r := range rs {
		switch {
		case len(r.Lost) > 0 || len(r.Stranded) > 0:
			return fmt.Errorf("%w: %s of job %q: lost %v, stranded %v%s", ErrNeedsOperator, r.Kind, r.Job,
				r.Lost, r.Stranded, because(err))
		case err != nil && errors.Is(err, ErrFailed) && (r.Done && r.Error != "" || !r.Done && r.Op != ""):
			return fmt.Errorf("%w: %w", ErrNeedsOperator, err)
		}
	}
	for _, r := range rs {
		if err != nil && r.Outcome == machine.OutcomeAborted && guestRefused(r.Reason) {
			return fmt.Errorf("%w: %w", ErrGuestRefused, err)
		}
	}
	return err
}

// guestRefused: the machine's reason ("vm NAME: prepare: WHY") says a
// guest refused its round or let its deadline pass, not that its VM or
// host was missing.
func guestRefused(reason string) bool {
	_, why, ok := strings.Cut(reason, ": "+string(machine.Prepare)+": ")
	return ok && (strings.Contains(why, hostd.ErrGuest.Error()) || why == "deadline")
}

func because(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

// failure is a refinement of ErrFailed: its own message, and errors.Is
// matches ErrFailed too.
type failure string

func (f failure) Error() string { return string(f) }
func (f failure) Unwrap() error { return ErrFailed }

// ErrNotLeader: this coordinator replica does not lead (or no longer
// does): it neither writes the store nor drives operations; the CLI asks
// the leader instead.
var ErrNotLeader = errors.New("not the leading coordinator")

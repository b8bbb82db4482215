package guestd

import (
	"fmt"

	"github.com/symvirt/symvirt/guestproto"
)

// phase is where the guest is in a round.
type phase int

const (
	phaseIdle      phase = iota // no round
	phasePreparing              // PREPARE work running (hooks, apps, NICs, sync)
	phaseReady                  // READY sent; waiting for RESUME/ABORT, across host connections
	phaseFinishing              // RESUME/ABORT/refusal work running (NICs, hooks, apps)
)

func (p phase) String() string {
	switch p {
	case phasePreparing:
		return guestproto.StatePreparing
	case phaseReady:
		return guestproto.StateReady
	case phaseFinishing:
		return guestproto.StateFinishing
	}
	return guestproto.StateIdle
}

// action is what the agent must do about a host message.
type action int

const (
	actIgnore    action = iota // nothing now: the work in progress answers
	actStart                   // start the work (prepare, resume or abort)
	actReady                   // answer READY again (duplicate PREPARE)
	actRefuse                  // answer REFUSED with the returned reason
	actDone                    // answer DONE at once: nothing of that round here
	actCancelPrp               // cancel the running prepare; its end answers DONE
)

var actionNames = [...]string{"ignore", "start", "ready", "refuse", "done", "cancel-prepare"}

func (a action) String() string { return actionNames[a] }

// round is the guest's round state machine: messages in, actions out, no
// I/O. The agent holds its lock around every call and does the I/O.
//
//	idle      --PREPARE-->           preparing
//	preparing --work ok-->           ready        (READY sent)
//	preparing --work failed/ABORT--> finishing    (REFUSED sent / DONE later)
//	ready     --RESUME/ABORT-->      finishing
//	finishing --work done-->         idle         (DONE sent)
//
// Messages that do not fit get an answer that is true and harmless: a
// duplicate PREPARE is answered READY if it already is, a PREPARE while busy
// is refused, RESUME or ABORT of a round the guest is not in is DONE (there is
// nothing of it left to undo).
type round struct {
	phase              phase
	id, op             string
	lastID, lastResult string // the last finished round, for logs and duplicates
}

func (r *round) onPrepare(id, op string) (action, string) {
	switch {
	case r.phase == phaseIdle:
		r.phase, r.id, r.op = phasePreparing, id, op
		return actStart, ""
	case r.id == id && r.phase == phasePreparing:
		return actIgnore, ""
	case r.id == id && r.phase == phaseReady:
		return actReady, ""
	}
	return actRefuse, fmt.Sprintf("busy: round %s (%s) is %s", r.id, r.op, r.phase)
}

// onResume: RESUME before READY (a confused host) is treated as an ABORT:
// the guest never reached its safe point, so it must not act as if the
// operation happened.
func (r *round) onResume(id string) action {
	if r.id != id || r.phase == phaseIdle {
		return actDone
	}
	switch r.phase {
	case phasePreparing:
		return actCancelPrp
	case phaseReady:
		r.phase = phaseFinishing
		return actStart
	}
	return actIgnore // finishing: DONE follows
}

func (r *round) onAbort(id string) action {
	if r.id != id || r.phase == phaseIdle {
		return actDone
	}
	switch r.phase {
	case phasePreparing:
		return actCancelPrp
	case phaseReady:
		r.phase = phaseFinishing
		return actStart
	}
	return actIgnore
}

// prepared records the end of the prepare work: ready, or failed/cancelled
// (the undo work follows in phaseFinishing).
func (r *round) prepared(id string, ready bool) error {
	if r.phase != phasePreparing || r.id != id {
		return fmt.Errorf("guestd: round %s prepared in phase %s of round %s", id, r.phase, r.id)
	}
	if ready {
		r.phase = phaseReady
	} else {
		r.phase = phaseFinishing
	}
	return nil
}

// finished records the end of the finishing work.
func (r *round) finished(id, result string) error {
	if r.phase != phaseFinishing || r.id != id {
		return fmt.Errorf("guestd: round %s finished in phase %s of round %s", id, r.phase, r.id)
	}
	r.lastID, r.lastResult = id, result
	r.phase, r.id, r.op = phaseIdle, "", ""
	return nil
}

// pending is what HELLO_ACK reports: the round in flight, if READY was sent.
func (r *round) pending() (id, op string) {
	if r.phase == phaseReady {
		return r.id, r.op
	}
	return "", ""
}

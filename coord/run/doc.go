// Package run drives one operation of the pure state machine
// (coord/machine) to its end: it journals the operation before any action
// goes out, executes the actions in parallel through an Executor, and
// feeds their answers, the clock and lost hosts back as events. It is the
// only driver loop: the coordinator uses it for job operations (actions
// are RPCs to hostds) and hostd uses it for a single VM's operation
// (actions are local steps, or calls to a peer hostd).
//
// # Contract
//
//   - Journal is called with the Op before the actions of that Step are
//     executed: once per Step that sends actions, enters a phase or ends
//     the operation. A Step that only takes in an answer is not written
//     (after a crash, the recovered operation re-sends that action and is
//     answered again). If Journal fails, nothing more is sent and Drive
//     returns ErrJournal (wrapped): what was executed is undone by the
//     hosts' leases, or by a restart that recovers the journal.
//   - The Executor answers every Action with exactly one Event: an
//     ActionResult with the action's ID, or a HostDown. Late answers after
//     the operation is done are dropped.
//   - A Tick reaches the machine no later than Op.Deadline.
package run

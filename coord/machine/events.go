package machine

import "fmt"

// onResult applies the driver's answer to an outstanding action; any
// other answer is counted in Ignored.
func (o *Op) onResult(r ActionResult) {
	if r.ID.Op != o.ID {
		o.Ignored++
		return
	}
	if r.ID.VM == "" {
		if o.Record == nil || o.Record.ID != r.ID {
			o.Ignored++
			return
		}
		o.resolveRecord(r.OK, r.Reason)
		return
	}
	i, ok := o.index[r.ID.VM]
	if !ok {
		o.Ignored++
		return
	}
	v := &o.VMs[i]
	var slot **Action
	switch {
	case v.Pending != nil && v.Pending.ID == r.ID:
		slot = &v.Pending
	case v.Side != nil && v.Side.ID == r.ID:
		slot = &v.Side
	default:
		o.Ignored++
		return
	}
	o.resolve(v, slot, r)
	o.advance(v)
}

// failAction fails the action in *slot for reason (deadline, host down).
func (o *Op) failAction(v *VMState, slot **Action, reason string) {
	o.resolve(v, slot, ActionResult{Reason: reason})
}

// resolve applies the answer (or the failure) of the action in *slot.
func (o *Op) resolve(v *VMState, slot **Action, r ActionResult) {
	a := o.drop(slot)
	if r.OK && (a.Type == Save || a.Type == WaitSave) && r.Digest == "" {
		r.OK, r.Reason = false, "no digest reported"
	}
	st := v.status(a.Type)
	if r.OK {
		*st = StatusOK
		switch a.Type {
		case Save:
			v.Digest = r.Digest
		case WaitSave:
			v.Digest, v.Pause, v.SnapshotAt = r.Digest, r.Pause, r.SnapshotAt
		}
		return
	}
	reason := r.Reason
	if reason == "" {
		reason = "failed"
	}
	switch {
	case a.Type.forward():
		*st = StatusFailed
		v.addErr(fmt.Sprintf("%s: %s", a.Type, reason))
		o.fail(fmt.Sprintf("vm %s: %s: %s", v.Name, a.Type, reason))
		return
	case a.Type == WaitSave: // one attempt: the stream cannot be re-run
		*st = StatusFailed
		v.addErr(fmt.Sprintf("%s: %s", a.Type, reason))
		o.streamFailed(v, fmt.Sprintf("%s: %s", a.Type, reason))
		return
	}
	if a.Type == CancelMigrate && r.Running && v.Migrate == StatusOK && !v.Lost && !v.Switched {
		// The destination runs the VM (its transfer completed, so the
		// copy there is this VM's): the move happened, and its source
		// copy must never run again.
		*st = StatusFailed
		v.addErr(fmt.Sprintf("%s on %s: the vm runs there", a.Type, a.Host))
		v.Switched, v.At, v.Dir, v.Finish = true, v.Dest, DirForward, StatusOK
		return
	}
	if !o.isDown(a.Host) && v.Tries[a.Type] < o.Opts.MaxAttempts {
		o.issue(v, slot, a.Type, a.Host, a.Outcome) // same step, next attempt
		return
	}
	*st = StatusFailed
	v.addErr(fmt.Sprintf("%s on %s: %s", a.Type, a.Host, reason))
}

func (o *Op) resolveRecord(ok bool, reason string) {
	a := o.drop(&o.Record)
	if ok {
		o.Recorded = StatusOK
		return
	}
	if o.RecordTries < o.Opts.MaxAttempts {
		o.issueRecord(a.Outcome)
		return
	}
	o.Recorded = StatusFailed
	msg := fmt.Sprintf("%s %s: %s", RecordCheckpoint, a.Outcome, reason)
	if o.Error != "" {
		msg = o.Error + "; " + msg
	}
	o.Error = msg
}

func (o *Op) onTick() {
	if o.Deadline.IsZero() || o.Now.Before(o.Deadline) {
		return
	}
	expired := func(a *Action) bool { return a != nil && !o.Now.Before(a.Deadline) }
	for i := range o.VMs {
		v := &o.VMs[i]
		if expired(v.Pending) {
			o.failAction(v, &v.Pending, "deadline")
		}
		if expired(v.Side) {
			o.failAction(v, &v.Side, "deadline")
		}
	}
	if expired(o.Record) {
		o.resolveRecord(false, "deadline")
	}
	o.dirtyAll = true
}

// onHostDown: the VMs whose copy is on host are lost, except a VM whose
// source died after its transfer completed, which is salvaged at its
// destination; actions on host fail; before the commit point, a loss (or a
// lost destination) rolls the operation back.
func (o *Op) onHostDown(host string) {
	if host == "" || o.isDown(host) {
		return
	}
	o.Down = append(o.Down, host)
	var lost, destDown bool
	for i := range o.VMs {
		v := &o.VMs[i]
		if v.Lost {
			o.failOn(v, host)
			continue
		}
		moving := o.moving(v)
		switch {
		case v.At == host && moving && !v.Switched && v.Migrate == StatusOK &&
			v.Cancel == "" && v.Finish == "" && !o.isDown(v.Dest):
			// The destination holds a complete paused copy and the source
			// was never resumed: run the VM at the destination.
			o.failOn(v, host)
			if v.Dir != DirForward {
				v.Dir, v.Attach = DirForward, ""
			}
			v.addErr(fmt.Sprintf("source host %s down before the switch: continued at the destination", host))
		case v.At == host:
			o.lose(v, host)
			lost = lost || !o.Committed
		case moving && !v.Switched && v.Dest == host:
			if v.Pending != nil && v.Pending.Type == Migrate {
				o.failAction(v, &v.Pending, "destination host "+host+" down")
			}
			if v.Side != nil && v.Side.Type == Launch {
				o.failAction(v, &v.Side, "destination host "+host+" down")
			}
			o.failOn(v, host)
			switch {
			case v.Dir == DirForward && o.isDown(v.Host):
				o.lose(v, host) // salvaged from a dead source, now the destination died too
				lost = lost || !o.Committed
			case v.Dir == DirForward:
				// Committed, but the destination never ran it: back to the source.
				v.Dir, v.Attach = DirBack, ""
				v.addErr(fmt.Sprintf("destination host %s down before the switch: resumed at the source", host))
			default:
				destDown = true
			}
		default:
			o.failOn(v, host)
		}
	}
	switch {
	case lost:
		o.fail("host " + host + " down")
	case destDown:
		o.fail("destination host " + host + " down")
	}
	o.dirtyAll = true
}

// failOn fails v's outstanding actions addressed to host (not retried).
func (o *Op) failOn(v *VMState, host string) {
	if v.Pending != nil && v.Pending.Host == host {
		o.failAction(v, &v.Pending, "host "+host+" down")
	}
	if v.Side != nil && v.Side.Host == host {
		o.failAction(v, &v.Side, "host "+host+" down")
	}
}

// lose marks v lost on host: no more actions except dropping an incoming
// copy at a live destination.
func (o *Op) lose(v *VMState, host string) {
	if v.Pending != nil {
		o.drop(&v.Pending)
	}
	if v.Side != nil && o.isDown(v.Side.Host) {
		o.drop(&v.Side)
	}
	v.Lost, v.Finished, v.Outcome = true, true, OutcomeLost
	v.addErr("host " + host + " down")
	if o.liveCheckpoint() && o.Committed && v.WaitSave != StatusOK {
		if v.WaitSave == StatusIssued {
			v.WaitSave = StatusFailed
		}
		o.streamFailed(v, "host "+host+" down before its stream was saved")
	}
}

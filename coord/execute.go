package coord

import (
	"context"
	"fmt"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
)

// executor runs one operation's actions: each VM action is the hostd step
// of the same name on the action's host; RecordCheckpoint is a catalog
// write. It only reads the operation's record (the driver owns it).
type executor struct {
	c     *Coord
	rec   *OpRecord
	notes *vmNotes
}

// stepKinds maps the machine's actions to hostd steps, one to one. The
// coordinator does not drive rejuvenation (hostd runs it alone), so
// Replace is missing.
var stepKinds = map[machine.ActionType]string{
	machine.Prepare: hostd.StepPrepare, machine.Detach: hostd.StepDetach, machine.Stop: hostd.StepStop,
	machine.Save: hostd.StepSave, machine.Migrate: hostd.StepMigrate, machine.Restore: hostd.StepRestore,
	machine.Launch: hostd.StepLaunch, machine.Arm: hostd.StepArm, machine.Fence: hostd.StepFence, machine.Point: hostd.StepPoint,
	machine.WaitSave: hostd.StepWaitSave, machine.Attach: hostd.StepAttach, machine.Resume: hostd.StepResume,
	machine.Abort: hostd.StepAbort, machine.DeleteArtifacts: hostd.StepDeleteArtifacts,
	machine.CancelMigrate: hostd.StepCancelMigrate, machine.Kill: hostd.StepKill,
}

// Execute runs one action and answers it. A hostd that cannot be reached
// (and does not answer a probe) is reported down.
func (e *executor) Execute(ctx context.Context, a machine.Action) machine.Event {
	fail := func(reason string) machine.Event {
		return machine.ActionResult{ID: a.ID, Reason: reason, Now: time.Now()}
	}
	if a.Type == machine.RecordCheckpoint {
		if err := e.c.record(a); err != nil {
			return fail(err.Error())
		}
		return machine.ActionResult{ID: a.ID, OK: true, Now: time.Now()}
	}
	addr, ok := e.rec.Hosts[a.Host]
	if !ok {
		return fail(fmt.Sprintf("unknown host %q", a.Host))
	}
	req, err := e.stepRequest(a)
	if err != nil {
		return fail(err.Error())
	}
	cctx, cancel := context.WithDeadline(ctx, a.Deadline.Add(5*time.Second))
	defer cancel()
	res, err := e.c.client(addr).Step(cctx, req)
	if err != nil {
		if e.c.unreachable(ctx, addr) {
			return machine.HostDown{Host: a.Host, Now: time.Now()}
		}
		return fail(err.Error())
	}
	if res.Note != "" {
		e.c.log.Warn("step departed from its request", "op", a.ID.Op, "vm", a.VM, "step", a.Type, "note", res.Note)
		e.notes.add(a.VM, res.Note)
	}
	if note := e.rec.Fence.fallbackNote(); note != "" && a.Type == machine.Fence && res.OK {
		e.notes.add(a.VM, note)
	}
	return machine.ActionResult{ID: a.ID, OK: res.OK, Reason: res.Reason, Digest: res.Digest,
		Pause: res.Pause, SnapshotAt: res.SnapshotAt, Now: time.Now()}
}

// stepRequest is the hostd step that executes a, with its kind's arguments.
func (e *executor) stepRequest(a machine.Action) (hostd.StepRequest, error) {
	kind, ok := stepKinds[a.Type]
	if !ok {
		return hostd.StepRequest{}, fmt.Errorf("action %s: the coordinator has no hostd step for it: %w", a.Type, ErrInvalid)
	}
	op := e.rec.Op
	req := hostd.StepRequest{ID: a.ID.String(), Op: a.ID.Op, Kind: kind, VM: a.VM, Lease: e.c.cfg.Lease, Deadline: a.Deadline,
		Epoch: e.c.epoch()}
	switch a.Type {
	case machine.Prepare:
		req.Prepare = &hostd.PrepareArgs{Operation: string(op.Kind), Freeze: a.Freeze}
	case machine.Resume:
		req.Resume = &hostd.ResumeArgs{Outcome: a.Outcome}
	case machine.Fence:
		req.Fence = e.rec.Fence.peers(a.VM)
	case machine.Save, machine.Arm, machine.Point, machine.WaitSave, machine.Restore, machine.DeleteArtifacts:
		dir, err := e.c.ckDir(op.Opts.CheckpointID, a.VM)
		if err != nil {
			return req, err
		}
		req.Save = &hostd.SaveArgs{Dir: dir, Bandwidth: a.Bandwidth}
		if a.Type == machine.Point {
			// A point on a VM whose arming failed arms it at the cap.
			req.Save.Bandwidth = op.Opts.Bandwidth
		}
	case machine.Migrate, machine.Launch:
		dest, ok := e.rec.Hosts[a.Dest]
		if !ok {
			return req, fmt.Errorf("unknown destination %q", a.Dest)
		}
		grant, err := e.c.grant(a)
		if err != nil {
			return req, err
		}
		req.Migrate = &hostd.MigrateArgs{Dest: dest, Grant: grant, CopyStorage: a.CopyStorage}
	}
	return req, nil
}

// grant signs the coordinator's permission for a migration's source to
// hand the VM to its destination; hosts are named as registered, which
// must be their certificates' names.
func (c *Coord) grant(a machine.Action) (*hostd.Grant, error) {
	if c.cfg.Signer == nil {
		return nil, nil // no TLS: hostds do not authenticate each other
	}
	expires := a.Deadline
	if expires.IsZero() {
		expires = time.Now().Add(c.transferTimeout())
	}
	return hostd.SignGrant(c.cfg.Signer, hostd.MigrationGrant{Op: a.ID.Op, VM: a.VM,
		Source: a.Host, Dest: a.Dest, Expires: expires})
}

// unreachable probes a hostd a few times.
func (c *Coord) unreachable(ctx context.Context, addr string) bool {
	for range 3 {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.client(addr).Host(pctx)
		cancel()
		if err == nil {
			return false
		}
		time.Sleep(300 * time.Millisecond)
	}
	return true
}

func (c *Coord) transferTimeout() time.Duration {
	if c.cfg.TransferTimeout > 0 {
		return c.cfg.TransferTimeout
	}
	return 10 * time.Minute
}

package coord

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
)

// executor runs one operation's actions: each is a step of the hostd that
// holds the VM, or the catalog write RecordCheckpoint.
type executor struct {
	c     *Coord
	rec   *OpRecord
	notes *vmNotes
}

// execute runs one action and answers it. A hostd that cannot be reached
// (and does not answer a probe) is reported down as well.
func (e *executor) Execute(ctx context.Context, a machine.Action) machine.Event {
	c, rec := e.c, e.rec
	fail := func(reason string) machine.Event {
		return machine.ActionResult{ID: a.ID, OK: false, Reason: reason, Now: time.Now()}
	}
	if a.Type == machine.RecordCheckpoint {
		return c.record(ctx, rec, a)
	}
	addr, ok := rec.Hosts[a.Host]
	if !ok {
		return fail(fmt.Sprintf("unknown host %q", a.Host))
	}
	req, err := c.stepRequest(rec, a)
	if err != nil {
		return fail(err.Error())
	}
	cctx, cancel := context.WithDeadline(ctx, a.Deadline.Add(5*time.Second))
	defer cancel()
	res, err := c.client(addr).Step(cctx, req)
	if err != nil {
		if c.unreachable(ctx, addr) {
			return machine.HostDown{Host: a.Host, Now: time.Now()}
		}
		return fail(err.Error())
	}
	if res.Note != "" {
		c.log.Warn("step departed from its request", "op", a.ID.Op, "vm", a.VM, "step", a.Type, "note", res.Note)
		e.notes.add(a.VM, res.Note)
	}
	if req.Kind == hostd.StepPoint && res.OK && res.Digest == "" {
		res.Digest = "streaming" // the digest comes with wait-save, in record
	}
	return machine.ActionResult{ID: a.ID, OK: res.OK, Reason: res.Reason, Digest: res.Digest, Now: time.Now()}
}

// stepRequest is the hostd step that executes a.
func (c *Coord) stepRequest(rec *OpRecord, a machine.Action) (hostd.StepRequest, error) {
	req := hostd.StepRequest{ID: a.ID.String(), Op: a.ID.Op, Kind: string(a.Type), VM: a.VM,
		Lease: c.cfg.Lease, Deadline: a.Deadline}
	live := rec.Op.Kind == machine.KindCheckpoint && rec.Live
	switch a.Type {
	case machine.Prepare:
		req.Prepare = &hostd.PrepareArgs{Operation: string(rec.Op.Kind), Freeze: rec.Freeze}
	case machine.Resume:
		req.Resume = &hostd.ResumeArgs{Outcome: a.Outcome}
	case machine.Detach, machine.Stop, machine.Save, machine.Restore, machine.DeleteArtifacts:
		if a.Type == machine.Detach && !live || a.Type == machine.Stop {
			break
		}
		dir, err := c.ckDir(rec.Op.Opts.CheckpointID, a.VM)
		if err != nil {
			return req, err
		}
		req.Save = &hostd.SaveArgs{Dir: dir, Bandwidth: rec.Bandwidth}
	case machine.Migrate:
		dest, ok := rec.Hosts[a.Dest]
		if !ok {
			return req, fmt.Errorf("unknown destination %q", a.Dest)
		}
		grant, err := c.grant(a)
		if err != nil {
			return req, err
		}
		req.Migrate = &hostd.MigrateArgs{Dest: dest, Grant: grant}
	}
	if live {
		// A live checkpoint's detach arms, its stop fences, its save
		// takes the snapshot point.
		switch a.Type {
		case machine.Detach:
			req.Kind = hostd.StepArm
		case machine.Stop:
			req.Kind = hostd.StepFence
		case machine.Save:
			req.Kind = hostd.StepPoint
		}
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

// record is RecordCheckpoint: the checkpoint becomes complete (with every
// VM's digest) or failed in the catalog.
func (c *Coord) record(ctx context.Context, rec *OpRecord, a machine.Action) machine.Event {
	var ck Checkpoint
	if err := c.store.Get(bucketCheckpoints, a.CheckpointID, &ck); err != nil {
		return machine.ActionResult{ID: a.ID, Reason: err.Error(), Now: time.Now()}
	}
	ck.Status, ck.Done = a.Outcome, time.Now().UTC()
	digests := a.Digests
	var snaps map[string]hostd.StepResult
	if rec.Live && a.Outcome == machine.CheckpointComplete {
		// The job runs again (its resume goes on beside this); complete
		// means every stream written, synced and checksummed.
		var err error
		if digests, snaps, err = c.waitStreams(ctx, rec, ck); err != nil {
			rec.LiveFailed = err.Error()
			ck.Status = machine.CheckpointFailed
			c.deleteArtifacts(ctx, rec, ck)
		}
	}
	for i := range ck.VMs {
		ck.VMs[i].Digest = digests[ck.VMs[i].Name]
		ck.VMs[i].Pause, ck.VMs[i].SnapshotAt = snaps[ck.VMs[i].Name].Pause, snaps[ck.VMs[i].Name].SnapshotAt
	}
	if err := c.store.Put(bucketCheckpoints, ck.ID, ck); err != nil {
		return machine.ActionResult{ID: a.ID, Reason: err.Error(), Now: time.Now()}
	}
	return machine.ActionResult{ID: a.ID, OK: true, Now: time.Now()}
}

// waitStreams waits for every VM's live stream; the first failure fails
// the checkpoint.
func (c *Coord) waitStreams(ctx context.Context, rec *OpRecord, ck Checkpoint) (map[string]string, map[string]hostd.StepResult, error) {
	type res struct {
		vm  string
		r   hostd.StepResult
		err error
	}
	ch := make(chan res, len(ck.VMs))
	for _, v := range ck.VMs {
		go func() {
			wctx, cancel := context.WithTimeout(ctx, c.transferTimeout())
			defer cancel()
			var r hostd.StepResult
			var err error
			for {
				// A hostd that is away (restarting) is asked again: a
				// hostd that died mid-stream answers that it has no
				// complete checkpoint.
				r, err = c.client(rec.Hosts[v.Host]).Step(wctx, hostd.StepRequest{ID: rec.Op.ID + "/" + v.Name + "/save-wait",
					Op: rec.Op.ID, Kind: hostd.StepWaitSave, VM: v.Name, Save: &hostd.SaveArgs{Dir: v.Dir}})
				if err == nil || !sleepCtx(wctx, time.Second) {
					break
				}
			}
			if err == nil && !r.OK {
				err = errors.New(r.Reason)
			}
			ch <- res{v.Name, r, err}
		}()
	}
	digests, results := map[string]string{}, map[string]hostd.StepResult{}
	var first error
	for range ck.VMs {
		r := <-ch
		if r.err != nil && first == nil {
			first = fmt.Errorf("vm %s: %w", r.vm, r.err)
		}
		digests[r.vm], results[r.vm] = r.r.Digest, r.r
	}
	return digests, results, first
}

// deleteArtifacts removes what a failed live checkpoint left.
func (c *Coord) deleteArtifacts(ctx context.Context, rec *OpRecord, ck Checkpoint) {
	for _, v := range ck.VMs {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for {
			r, err := c.client(rec.Hosts[v.Host]).Step(dctx, hostd.StepRequest{ID: rec.Op.ID + "/" + v.Name + "/delete-live",
				Op: rec.Op.ID, Kind: hostd.StepDeleteArtifacts, VM: v.Name, Save: &hostd.SaveArgs{Dir: v.Dir}})
			if err == nil && r.OK {
				break
			}
			if !sleepCtx(dctx, time.Second) {
				c.log.Error("partial live checkpoint left behind", "vm", v.Name, "host", v.Host, "dir", v.Dir, "err", err, "reason", r.Reason)
				break
			}
		}
		cancel()
	}
}

// sleepCtx sleeps d unless ctx ends first; it reports whether it slept.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func (c *Coord) transferTimeout() time.Duration {
	if c.cfg.TransferTimeout > 0 {
		return c.cfg.TransferTimeout
	}
	return 10 * time.Minute
}

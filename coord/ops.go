package coord

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// OpRecord is a journaled operation.
type OpRecord struct {
	Op     *machine.Op       `json:"op"`
	Result *machine.Result   `json:"result,omitempty"`
	Hosts  map[string]string `json:"hosts"` // name -> address, frozen at start
	// Fence is a live checkpoint's network fence, resolved at start.
	Fence *OpFence `json:"fence,omitempty"`
}

// Ops lists journaled operations.
func (c *Coord) Ops() ([]OpRecord, error) { return listAll[OpRecord](c.store, bucketOps) }

// ProgressFunc receives an operation's progress; it must not block.
type ProgressFunc func(Progress)

// Progress is one update of a running operation.
type Progress struct {
	Op    string `json:"op"`
	Phase string `json:"phase"`
	Done  int    `json:"done"`  // VMs finished with the phase's action
	Total int    `json:"total"` // VMs of the operation
}

// run starts an operation and drives it to the end.
func (c *Coord) run(ctx context.Context, kind machine.Kind, job Job, vms []machine.VM, opts machine.Options, progress ProgressFunc) (machine.Result, error) {
	id := newID("op")
	if err := c.claim(job.Name, id); err != nil {
		return machine.Result{}, err
	}
	rec, acts, err := c.begin(id, kind, job.Name, vms, c.options(opts))
	if err != nil {
		c.release(job.Name)
		return machine.Result{}, err
	}
	if kind == machine.KindCheckpoint && opts.Live {
		rec.Fence = c.resolveFence(ctx, job, vms, job.NetworkFence)
	}
	c.log.Info("operation starts", "op", id, "kind", kind, "job", job.Name, "vms", len(vms))
	res, err := c.drive(ctx, rec, acts, progress)
	return res, opError(kind, job.Name, res, err)
}

// opError is an operation's error from its result and its driver's error
// (the journal's); `symvirt ops watch` reports the same.
func opError(kind machine.Kind, job string, res machine.Result, err error) error {
	switch {
	case err != nil && res.Done:
		return fmt.Errorf("%s of job %q: %w: it ended %s, but %w (a restarted coordinator repeats its closing steps)",
			kind, job, ErrFailed, res.Outcome, err)
	case err != nil:
		return fmt.Errorf("%s of job %q: %w: %w", kind, job, ErrFailed, err)
	case res.Outcome == machine.OutcomeAborted || res.Outcome == "":
		return fmt.Errorf("%s of job %q: %w: %s", kind, job, ErrFailed, res.Reason)
	case kind == machine.KindCheckpoint && res.Checkpoint != machine.CheckpointComplete:
		return fmt.Errorf("%s of job %q: %w: checkpoint %s: %s (the job runs on)", kind, job, ErrFailed, res.Checkpoint, res.Reason)
	}
	return nil
}

// begin makes an operation and its journal record; a checkpoint's
// catalog entry is written first, in progress.
func (c *Coord) begin(id string, kind machine.Kind, job string, vms []machine.VM, opts machine.Options) (*OpRecord, []machine.Action, error) {
	hosts, err := c.hostMap()
	if err != nil {
		return nil, nil, err
	}
	op, acts, err := machine.New(id, kind, job, vms, opts, time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	rec := &OpRecord{Op: op, Hosts: hosts}
	if kind != machine.KindCheckpoint {
		return rec, acts, nil
	}
	ck := Checkpoint{ID: opts.CheckpointID, Job: job, Op: id, Status: "in-progress", CreatedAt: time.Now().UTC()}
	for _, v := range vms {
		dir, err := c.ckDir(opts.CheckpointID, v.Name)
		if err != nil {
			return nil, nil, err
		}
		ck.VMs = append(ck.VMs, CheckpointVM{Name: v.Name, Host: v.Host, Dir: dir})
	}
	if err := c.store.Put(bucketCheckpoints, ck.ID, ck); err != nil {
		c.log.Error("journal write failed: operation refused", "op", id, "job", job, "err", err)
		return nil, nil, fmt.Errorf("%s of job %q: %w: journal write failed: %v", kind, job, ErrFailed, err)
	}
	return rec, acts, nil
}

// options are an operation's options with the coordinator's timeouts.
func (c *Coord) options(o machine.Options) machine.Options {
	o.PrepareTimeout, o.StepTimeout, o.TransferTimeout = c.cfg.PrepareTimeout, c.cfg.StepTimeout, c.cfg.TransferTimeout
	return o
}

// afterOp records where the job's VMs are now.
func (c *Coord) afterOp(rec *OpRecord, res machine.Result) {
	j, err := c.Job(res.Job)
	if err != nil {
		return
	}
	changed := false
	for _, r := range res.VMs {
		if r.Host == "" || r.Outcome == machine.OutcomeLost {
			continue
		}
		for i := range j.VMs {
			if j.VMs[i].Name == r.Name && j.VMs[i].Host != r.Host {
				j.VMs[i].Host = r.Host
				changed = true
			}
		}
	}
	if changed {
		if err := c.store.Put(bucketJobs, j.Name, j); err != nil {
			c.log.Error("journal write failed: the job's placement is not recorded", "job", j.Name, "err", err)
		}
	}
}

// CheckpointOptions control a job checkpoint.
type CheckpointOptions struct {
	// Live copies each VM while it runs and pauses it only for its
	// snapshot point (hostd's live.go); the checkpoint is complete once
	// every stream is written.
	Live bool `json:"live"`
	// Bandwidth caps each live stream (bytes/s; 0: none).
	Bandwidth int64 `json:"bandwidth,omitempty"`
	// NetworkFence overrides the job's network fence scope for this
	// checkpoint ("": the job's; see Job.NetworkFence).
	NetworkFence string `json:"network_fence,omitempty"`
}

// Checkpoint checkpoints every VM of a job together (a consistent cut).
func (c *Coord) Checkpoint(ctx context.Context, job string, o CheckpointOptions, progress ProgressFunc) (machine.Result, error) {
	if err := validFence("network_fence", o.NetworkFence); err != nil {
		return machine.Result{}, fmt.Errorf("checkpoint of job %q: %w", job, err)
	}
	j, err := c.Job(job)
	if err != nil {
		return machine.Result{}, err
	}
	if o.NetworkFence != "" {
		j.NetworkFence = o.NetworkFence // this operation's, not the job's record
	}
	var vms []machine.VM
	for _, v := range j.VMs {
		vms = append(vms, machine.VM{Name: v.Name, Host: v.Host})
	}
	return c.run(ctx, machine.KindCheckpoint, j, vms, machine.Options{CheckpointID: newID(job), Live: o.Live, Bandwidth: o.Bandwidth}, progress)
}

// RestartOptions control Restart.
type RestartOptions struct {
	Checkpoint   string   `json:"checkpoint,omitempty"` // default: the job's newest complete one
	ExcludeHosts []string `json:"exclude_hosts,omitempty"`
}

// Restart restores every VM of a job from a checkpoint, on its host or,
// when that host is excluded, cordoned or down, on another host with room.
func (c *Coord) Restart(ctx context.Context, job string, opts RestartOptions, progress ProgressFunc) (machine.Result, error) {
	j, err := c.Job(job)
	if err != nil {
		return machine.Result{}, err
	}
	var ck Checkpoint
	if opts.Checkpoint != "" {
		if ck, err = c.CheckpointByID(opts.Checkpoint); err != nil {
			return machine.Result{}, err
		}
		if ck.Job != job {
			return machine.Result{}, fmt.Errorf("checkpoint %s belongs to job %q, not %q: %w", ck.ID, ck.Job, job, ErrInvalid)
		}
	} else {
		cks, _ := c.Checkpoints()
		for _, x := range cks {
			if x.Job == job && x.Status == "complete" {
				ck = x
				break
			}
		}
		if ck.ID == "" {
			return machine.Result{}, fmt.Errorf("job %q has no complete checkpoint: %w", job, ErrNotFound)
		}
	}
	if ck.Status != "complete" {
		return machine.Result{}, fmt.Errorf("checkpoint %s is %s, not complete: %w", ck.ID, ck.Status, ErrInvalid)
	}
	// Nothing of the job may still run: two copies must never run.
	for _, v := range j.VMs {
		h, err := c.host(v.Host)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.client(h.Addr).Status(sctx, v.Name)
		cancel()
		if err == nil && st.State != "stopped" {
			return machine.Result{}, fmt.Errorf("vm %q still runs on %s (%s): stop the job first: %w", v.Name, v.Host, st.State, ErrBusy)
		}
	}
	load, err := c.placement(ctx, opts.ExcludeHosts)
	if err != nil {
		return machine.Result{}, err
	}
	var vms []machine.VM
	for _, v := range ck.VMs {
		m := machine.VM{Name: v.Name, Host: v.Host}
		if slices.Contains(opts.ExcludeHosts, v.Host) || load[v.Host] == nil {
			dest, err := pick(load, v.Host)
			if err != nil {
				return machine.Result{}, fmt.Errorf("vm %q: %w%s", v.Name, err, c.cordonedNote())
			}
			m.Dest = dest
		}
		vms = append(vms, m)
	}
	return c.run(ctx, machine.KindRestart, j, vms, machine.Options{CheckpointID: ck.ID}, progress)
}

// MigrateOptions control Migrate.
type MigrateOptions struct {
	To   []string `json:"to"`
	Live bool     `json:"live,omitempty"`
	// DependencyAware freezes each guest's untainted processes while it
	// migrates (implies Live).
	DependencyAware bool `json:"dependency_aware,omitempty"`
	// CopyStorage takes each moving VM's disks along (hosts that share
	// no disk storage); hostd also does when its config says local_disks.
	CopyStorage bool `json:"copy_storage,omitempty"`
}

// Migrate moves a job (or one VM of it) to the given hosts, round-robin.
func (c *Coord) Migrate(ctx context.Context, target string, opts MigrateOptions, progress ProgressFunc) (machine.Result, error) {
	if len(opts.To) == 0 {
		return machine.Result{}, fmt.Errorf("migrate: --to is missing: %w", ErrInvalid)
	}
	for _, h := range opts.To {
		if _, err := c.host(h); err != nil {
			return machine.Result{}, fmt.Errorf("migrate to %s: %w", h, err)
		}
		if err := c.placeable("migrate to "+h, h); err != nil {
			return machine.Result{}, err
		}
	}
	j, err := c.Job(target)
	only := ""
	if err != nil {
		if j, err = c.jobOf(target); err != nil {
			return machine.Result{}, fmt.Errorf("%q is neither a job nor a vm of one: %w", target, ErrNotFound)
		}
		only = target
	}
	var vms []machine.VM
	i := 0
	for _, v := range j.VMs {
		if only != "" && v.Name != only {
			continue
		}
		dest := opts.To[i%len(opts.To)]
		i++
		if dest == v.Host {
			dest = ""
		}
		vms = append(vms, machine.VM{Name: v.Name, Host: v.Host, Dest: dest})
	}
	return c.run(ctx, machine.KindMigrate, j, vms, machine.Options{Live: opts.Live || opts.DependencyAware,
		Freeze: opts.DependencyAware, CopyStorage: opts.CopyStorage}, progress)
}

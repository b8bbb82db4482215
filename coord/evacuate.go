package coord

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// Evacuate empties hosts and cordons them (no new VM is placed there until
// UncordonHost). A job with VMs on them is moved as a job (its other VMs
// pause with it for a consistent cut) to hosts with room. A job with a VM
// on a host that is down is restarted instead, from its newest complete
// checkpoint, without the evacuated hosts: its VMs that still run elsewhere
// stop first (the whole job goes back to the checkpoint's cut, and two
// copies of a VM must never run). The result holds one entry per job, each
// with the outcome per VM.
func (c *Coord) Evacuate(ctx context.Context, hosts []string, live bool, progress ProgressFunc) ([]machine.Result, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("evacuate: no host given: %w", ErrInvalid)
	}
	for _, h := range hosts {
		if _, err := c.host(h); err != nil {
			return nil, fmt.Errorf("evacuate %s: %w", h, err)
		}
	}
	// All of them first: evacuating one must not place VMs on the next.
	for _, h := range hosts {
		if _, err := c.CordonHost(h, "evacuated"); err != nil {
			return nil, err
		}
	}
	jobs, err := c.Jobs()
	if err != nil {
		return nil, err
	}
	load, err := c.placement(ctx, hosts)
	if err != nil {
		return nil, err
	}
	down := c.downHosts(ctx, hosts)
	// Empty, not nil: a host without VMs answers [] (a nil result would
	// reach the client as {}, which is no list).
	results := []machine.Result{}
	var firstErr error
	for _, j := range jobs {
		res, on, err := c.evacuateJob(ctx, j, hosts, down, load, live, progress)
		if !on {
			continue
		}
		results = append(results, res)
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return results, firstErr
}

// downHosts returns the hosts whose hostd does not answer.
func (c *Coord) downHosts(ctx context.Context, hosts []string) map[string]bool {
	down := map[string]bool{}
	for _, name := range hosts {
		h, err := c.host(name)
		if err != nil {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if _, err := c.client(h.Addr).List(lctx); err != nil {
			c.log.Warn("evacuate: host down: its jobs restart from their checkpoint", "host", name, "err", err)
			down[name] = true
		}
		cancel()
	}
	return down
}

// evacuateJob moves (or, with a VM on a down host, restarts) one job; on
// reports whether the job had a VM on the hosts at all.
func (c *Coord) evacuateJob(ctx context.Context, j Job, hosts []string, down map[string]bool,
	load map[string]*hostLoad, live bool, progress ProgressFunc) (res machine.Result, on bool, err error) {
	var vms []machine.VM
	var lost []string
	for _, v := range j.VMs {
		m := machine.VM{Name: v.Name, Host: v.Host}
		if slices.Contains(hosts, v.Host) {
			on = true
			if down[v.Host] {
				lost = append(lost, v.Name)
			} else if m.Dest, err = pick(load, v.Host); err != nil {
				err = fmt.Errorf("evacuate: job %q vm %q: %w", j.Name, v.Name, err)
				return notStarted(machine.KindEvacuate, j, err, nil), true, err
			}
		}
		vms = append(vms, m)
	}
	switch {
	case !on:
		return res, false, nil
	case len(lost) > 0:
		res, err = c.restartElsewhere(ctx, j, hosts, down, lost, progress)
		return res, true, err
	}
	res, err = c.run(ctx, machine.KindEvacuate, j, vms, machine.Options{Live: live}, progress)
	return res, true, err
}

// restartElsewhere restarts a job that lost VMs on down hosts from its
// newest complete checkpoint, through Restart with every evacuated and
// cordoned host excluded.
func (c *Coord) restartElsewhere(ctx context.Context, j Job, hosts []string, down map[string]bool, lost []string,
	progress ProgressFunc) (machine.Result, error) {
	cks, err := c.Checkpoints()
	if err != nil {
		return notStarted(machine.KindRestart, j, err, lost), err
	}
	ck, ok := lastComplete(cks)[j.Name]
	if !ok {
		err := fmt.Errorf("evacuate: job %q lost %v with its host and has no complete checkpoint to restart from: %w",
			j.Name, lost, ErrNeedsOperator)
		return notStarted(machine.KindRestart, j, err, lost), err
	}
	for _, v := range j.VMs {
		if down[v.Host] {
			continue
		}
		h, err := c.host(v.Host)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, c.cfg.StepTimeout+10*time.Second)
		_, err = c.client(h.Addr).Stop(sctx, v.Name, 10*time.Second)
		cancel()
		if err != nil {
			c.log.Warn("evacuate: vm not stopped before its job's restart", "job", j.Name, "vm", v.Name, "host", v.Host, "err", err)
		}
	}
	exclude, err := c.withCordoned(hosts)
	if err != nil {
		return notStarted(machine.KindRestart, j, err, lost), err
	}
	c.log.Info("evacuate: restarting a job that lost VMs with their host", "job", j.Name, "lost", lost, "checkpoint", ck.ID)
	res, err := c.Restart(ctx, j.Name, RestartOptions{Checkpoint: ck.ID, ExcludeHosts: exclude}, progress)
	if res.Op == "" && err != nil {
		return notStarted(machine.KindRestart, j, err, lost), err
	}
	return res, err
}

// notStarted is the result of a job's part of an evacuation that could not
// start: every VM as it was (lost: gone with its host).
func notStarted(kind machine.Kind, j Job, err error, lost []string) machine.Result {
	res := machine.Result{Kind: kind, Job: j.Name, Done: true, Outcome: machine.OutcomeAborted,
		Reason: "not started: " + err.Error(), Lost: lost}
	for _, v := range j.VMs {
		outcome := machine.OutcomeAborted
		if slices.Contains(lost, v.Name) {
			outcome = machine.OutcomeLost
		}
		res.VMs = append(res.VMs, machine.VMResult{Name: v.Name, Host: v.Host, Outcome: outcome})
	}
	return res
}

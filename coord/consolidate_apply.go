package coord

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/coord/placement"
)

// applyPlan runs a plan's moves as live migrations through the machine
// (one operation per job and wave, its moving VMs together, with the
// guests' cooperation round), wave after wave (a wave's moves need the
// room the previous ones made), at most o.Parallel at once; a wave with a
// failed migration is the last. Then it reports the hosts left empty and,
// with o.Drain, cordons them.
func (c *Coord) applyPlan(ctx context.Context, rep *ConsolidateReport, o ConsolidateOptions, progress ProgressFunc) error {
	rep.Applied = true
	if err := c.takeBack(rep); err != nil {
		return err
	}
	var mu sync.Mutex
	safe := func(p Progress) {
		if progress != nil {
			mu.Lock()
			progress(p)
			mu.Unlock()
		}
	}
	var firstErr error
	for _, wave := range byWave(rep.Plan.Moves) {
		results, err := c.runWave(ctx, byJob(wave), max(o.Parallel, 1), safe)
		rep.Results = append(rep.Results, results...)
		if err != nil {
			firstErr = err
			c.log.Warn("consolidate: a migration failed: the later waves are not run", "err", err)
			break
		}
	}
	if err := c.reportEmpty(ctx, rep, o.Drain && rep.Mode == "consolidate"); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

// runWave migrates the groups (one per job), parallel at once; it returns
// the operations' results and the first error.
func (c *Coord) runWave(ctx context.Context, groups [][]placement.Move, parallel int, progress ProgressFunc) ([]machine.Result, error) {
	results := make([]machine.Result, len(groups))
	errs := make([]error, len(groups))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			results[i], errs[i] = c.moveJob(ctx, g, progress)
		}()
	}
	wg.Wait()
	var out []machine.Result
	var firstErr error
	for i, r := range results {
		if r.Op != "" {
			out = append(out, r)
		}
		if errs[i] != nil && firstErr == nil {
			firstErr = errs[i]
		}
	}
	return out, firstErr
}

// byWave splits moves by wave, in wave order.
func byWave(moves []placement.Move) [][]placement.Move {
	var out [][]placement.Move
	for _, m := range moves {
		for len(out) <= m.Wave {
			out = append(out, nil)
		}
		out[m.Wave] = append(out[m.Wave], m)
	}
	return slices.DeleteFunc(out, func(w []placement.Move) bool { return len(w) == 0 })
}

// takeBack uncordons the hosts consolidate drained that a scale out
// moves VMs to.
func (c *Coord) takeBack(rep *ConsolidateReport) error {
	for _, h := range rep.Hosts {
		if h.Labels[drainedLabel] != "true" || !slices.ContainsFunc(rep.Plan.Moves, func(m placement.Move) bool { return m.To == h.Name }) {
			continue
		}
		if err := c.UncordonHost(h.Name); err != nil {
			return fmt.Errorf("consolidate: take back drained host %s: %w", h.Name, err)
		}
		c.log.Info("consolidate: drained host taken back", "host", h.Name)
		rep.Uncordoned = append(rep.Uncordoned, h.Name)
	}
	return nil
}

// byJob groups moves by job, in the order each job first appears.
func byJob(moves []placement.Move) [][]placement.Move {
	var out [][]placement.Move
	at := map[string]int{}
	for _, m := range moves {
		i, ok := at[m.Job]
		if !ok {
			i = len(out)
			at[m.Job] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], m)
	}
	return out
}

// moveJob migrates one job's moving VMs, live; its other VMs run on.
func (c *Coord) moveJob(ctx context.Context, moves []placement.Move, progress ProgressFunc) (machine.Result, error) {
	j, err := c.Job(moves[0].Job)
	if err != nil {
		return machine.Result{}, fmt.Errorf("consolidate: %w", err)
	}
	var vms []machine.VM
	for _, m := range moves {
		i := slices.IndexFunc(j.VMs, func(v JobVM) bool { return v.Name == m.VM })
		if i < 0 || j.VMs[i].Host != m.From {
			return machine.Result{}, fmt.Errorf("consolidate: job %q vm %q is no longer on %s (the plan is stale; plan again): %w",
				j.Name, m.VM, m.From, ErrBusy)
		}
		if err := c.placeable("consolidate vm "+m.VM, m.To); err != nil {
			return machine.Result{}, err
		}
		vms = append(vms, machine.VM{Name: m.VM, Host: m.From, Dest: m.To})
	}
	c.log.Info("consolidate: moving", "job", j.Name, "vms", len(vms))
	return c.run(ctx, machine.KindMigrate, j, vms, machine.Options{Live: true}, progress)
}

// reportEmpty lists the hosts that run no VM now and, with drain,
// cordons them.
func (c *Coord) reportEmpty(ctx context.Context, rep *ConsolidateReport, drain bool) error {
	hosts, err := c.Hosts()
	if err != nil {
		return err
	}
	views := c.hostViews(ctx, hosts)
	cds, err := c.cordons()
	if err != nil {
		return err
	}
	for _, h := range hosts {
		v := views[h.Name]
		if v.err != nil || runsVMs(v) {
			continue
		}
		rep.Empty = append(rep.Empty, h.Name)
		if _, done := cds[h.Name]; !drain || done {
			continue
		}
		if _, err := c.CordonHost(h.Name, consolidateReason); err != nil {
			return err
		}
		rep.Drained = append(rep.Drained, h.Name)
	}
	c.log.Info("consolidate: applied", "empty", hostsString(rep.Empty), "drained", hostsString(rep.Drained))
	return nil
}

// runsVMs reports whether a host runs a VM (in any state but stopped).
func runsVMs(v hostView) bool {
	for _, vm := range v.vms {
		if vm.State != "stopped" {
			return true
		}
	}
	return false
}

package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/urfave/cli/v3"
)

const consolidateDesc = `Packs the jobs' VMs onto the fewest hosts, each filled up to --target of its capacity (CPU in cores and memory,
as the hostds measure them over their usage window: symvirt hosts), with the fewest migrations; when a host is above
--high, it plans the moves that relieve it instead (scale out), taking back hosts consolidate drained if needed.
Cordoned hosts take no VM. VMs of one anti-affinity group (anti_affinity: GROUP on a job, or on a VM in the job
file) never share a host. A VM that is not running, or on a host that does not answer, stays where it is.

Without --apply it prints the plan (a dry run): the moves and the hosts they free. --apply runs the moves as live
migrations through the coordinator (one operation per job, with the guests' cooperation round), wave after wave
(a wave's moves need the room the previous ones made; a failed migration ends the run), --parallel at once, then
reports the hosts that run no VM; --drain cordons them (no new placement) so they can be powered down.
--every repeats it; with --apply a round scales out at once, but consolidates only when that frees a host, a host
is filled below --low (if given), and no scale out happened within --cooldown: the band between --target and --high
and the cooldown keep VMs from moving back and forth.`

func consolidateCommand() *cli.Command {
	return &cli.Command{
		Name: "consolidate", Usage: "pack under-used VMs onto fewer hosts (live migrations), or spread them out of an overloaded host",
		Description: consolidateDesc,
		Flags: coordFlags(
			&cli.BoolFlag{Name: "plan", Usage: "print the plan only (the default)"},
			&cli.BoolFlag{Name: "apply", Usage: "run the plan's migrations"},
			&cli.IntFlag{Name: "parallel", Value: 1, Usage: "migrations at once (with --apply)"},
			&cli.BoolFlag{Name: "drain", Usage: "cordon the hosts left empty (with --apply)"},
			&cli.FloatFlag{Name: "target", Value: coord.DefaultTarget, Usage: "fill a host up to this fraction of its capacity"},
			&cli.FloatFlag{Name: "high", Value: coord.DefaultHigh, Usage: "scale out of a host above this fraction"},
			&cli.FloatFlag{Name: "low", Usage: "with --every --apply: consolidate only while a host is filled below this fraction (0: whenever a host can be freed)"},
			&cli.DurationFlag{Name: "every", Usage: "repeat every so often until interrupted (e.g. 5m)"},
			&cli.DurationFlag{Name: "cooldown", Value: 15 * time.Minute, Usage: "with --every: no consolidation this long after a scale out"},
		),
		Action: runConsolidate,
	}
}

func runConsolidate(ctx context.Context, cmd *cli.Command) error {
	out, err := output(cmd)
	if err != nil {
		return err
	}
	if cmd.Args().Len() != 0 {
		return usageErr("consolidate: takes no argument, got %d", cmd.Args().Len())
	}
	if cmd.Bool("plan") && cmd.Bool("apply") {
		return usageErr("consolidate: --plan and --apply exclude each other")
	}
	if cmd.Int("parallel") < 1 {
		return usageErr("consolidate: --parallel %d: want 1 or more", cmd.Int("parallel"))
	}
	c, err := coordClient(cmd)
	if err != nil {
		return err
	}
	o := coord.ConsolidateOptions{Apply: cmd.Bool("apply"), Parallel: int(cmd.Int("parallel")), Drain: cmd.Bool("drain"),
		Target: cmd.Float("target"), High: cmd.Float("high"), Low: cmd.Float("low")}
	every := cmd.Duration("every")
	if every <= 0 {
		return consolidateOnce(ctx, c, o, out)
	}
	return consolidateLoop(ctx, c, o, out, every, cmd.Duration("cooldown"))
}

// consolidateOnce plans or applies once and prints the report.
func consolidateOnce(ctx context.Context, c *coord.Client, o coord.ConsolidateOptions, out cliutil.Output) error {
	bar := cliutil.NewProgress("consolidate", o.Apply)
	rep, err := c.Consolidate(ctx, o, func(p coord.Progress) {
		bar.Update(fmt.Sprintf("%s %d/%d", p.Phase, p.Done, p.Total), 0, 0, 0)
	})
	bar.Done()
	if err == nil || rep.Mode != "" {
		out.Print(rep, func(w io.Writer) { printConsolidate(w, rep) })
	}
	return err
}

// consolidateLoop plans every interval and, with --apply, applies a
// scale out at once and a consolidation only when it frees a host, a host
// is below --low (if set) and no scale out happened within cooldown.
func consolidateLoop(ctx context.Context, c *coord.Client, o coord.ConsolidateOptions, out cliutil.Output,
	every, cooldown time.Duration) error {
	var lastOut time.Time
	for {
		dry := o
		dry.Apply = false
		rep, err := c.Consolidate(ctx, dry, nil)
		switch {
		case err != nil:
			fmt.Fprintf(out.W, "consolidate: %v\n", err)
		case !o.Apply || len(rep.Plan.Moves) == 0:
			out.Print(rep, func(w io.Writer) { printConsolidate(w, rep) })
		case worthApplying(rep, o.Low, time.Since(lastOut) >= cooldown):
			if err := consolidateOnce(ctx, c, o, out); err != nil {
				fmt.Fprintf(out.W, "consolidate: %v\n", err)
			}
			if rep.Mode == "scale-out" {
				lastOut = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// worthApplying is the loop's hysteresis: a scale out at once; a
// consolidation only when it frees a host, a host is below low (if set),
// and the cooldown after the last scale out has passed.
func worthApplying(rep coord.ConsolidateReport, low float64, cooled bool) bool {
	if rep.Mode == "scale-out" {
		return len(rep.Plan.Moves) > 0
	}
	return len(rep.Plan.Freed) > 0 && (low == 0 || len(rep.Underused) > 0) && cooled
}

func printConsolidate(w io.Writer, r coord.ConsolidateReport) {
	verb := "would move"
	if r.Applied {
		verb = "moved"
	}
	fmt.Fprintf(w, "%s (target %.0f%%, high %.0f%%): %s %d VMs", r.Mode, r.Policy.Target*100, r.Policy.High*100, verb, len(r.Plan.Moves))
	if len(r.Plan.Freed) > 0 {
		fmt.Fprintf(w, ", frees %s", strings.Join(r.Plan.Freed, ", "))
	}
	if len(r.Plan.Overloaded) > 0 {
		fmt.Fprintf(w, ", still above high: %s", strings.Join(r.Plan.Overloaded, ", "))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, m := range r.Plan.Moves {
		fmt.Fprintf(tw, "  wave %d\t%s\t(job %s)\t%s -> %s\n", m.Wave, m.VM, m.Job, m.From, m.To)
	}
	tw.Flush()
	for h, why := range r.Skipped {
		fmt.Fprintf(w, "  host %s left out: %s\n", h, why)
	}
	for _, res := range r.Results {
		printResultLine(w, res)
	}
	if r.Applied {
		fmt.Fprintf(w, "hosts now empty: %s\n", orNone(r.Empty))
	}
	if len(r.Drained) > 0 {
		fmt.Fprintf(w, "drained (cordoned): %s\n", strings.Join(r.Drained, ", "))
	}
	if len(r.Uncordoned) > 0 {
		fmt.Fprintf(w, "taken back (uncordoned): %s\n", strings.Join(r.Uncordoned, ", "))
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// usageColumn is a host's usage for `symvirt hosts`: "cpu 0.3/2 mem 120M/1.9G (3 VMs)".
func usageColumn(u *coord.HostUsage) string {
	switch {
	case u == nil:
		return ""
	case u.Error != "":
		return "\tusage unknown: " + u.Error
	}
	return fmt.Sprintf("\tcpu %.2f/%g mem %s/%s (%d VMs)", u.CPU, u.CPUCapacity, cliutil.Bytes(u.Mem), cliutil.Bytes(u.MemCapacity), u.VMs)
}

// jobUsageColumn is a job's usage for `symvirt jobs`: its VMs' sums.
func jobUsageColumn(j coord.JobInfo) string {
	if len(j.Usage) == 0 {
		return ""
	}
	var cpu float64
	var mem int64
	for _, u := range j.Usage {
		cpu += u.CPU
		mem += u.Mem
	}
	return fmt.Sprintf("\tcpu %.2f mem %s", cpu, cliutil.Bytes(mem))
}

package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/symvirt/symvirt/internal/hostlist"
	"github.com/urfave/cli/v3"
)

// opRunner runs one coordinator operation; its result is printed even
// when it failed (it says what happened to each VM).
type opRunner func(ctx context.Context, c *coord.Client, cmd *cli.Command, arg string, p coord.ProgressFunc) (any, error)

// opCommand builds a command that runs one coordinator operation on its
// one argument (named arg).
func opCommand(name, usage, arg, desc string, flags []cli.Flag, run opRunner) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: arg, Description: desc,
		Flags: coordFlags(flags...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			out, err := output(cmd)
			if err != nil {
				return err
			}
			what, err := oneArg(cmd, arg)
			if err != nil {
				return err
			}
			c, err := coordClient(cmd)
			if err != nil {
				return err
			}
			bar := cliutil.NewProgress(name+" "+what, true)
			res, err := run(ctx, c, cmd, what, func(p coord.Progress) {
				bar.Update(fmt.Sprintf("%s %d/%d", p.Phase, p.Done, p.Total), 0, 0, 0)
			})
			bar.Done()
			if err == nil || ran(res) {
				out.Print(res, func(w io.Writer) { printOpResult(w, res) })
			}
			return err
		},
	}
}

// ran reports whether an operation started: only then has it a result
// worth printing (an operation refused before it began has none).
func ran(v any) bool {
	switch r := v.(type) {
	case machine.Result:
		return r.Op != ""
	case []machine.Result:
		return len(r) > 0
	}
	return v != nil
}

func printOpResult(w io.Writer, v any) {
	switch r := v.(type) {
	case machine.Result:
		printResultLine(w, r)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  VM\tHOST\tOUTCOME\tERROR")
		for _, vm := range r.VMs {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", vm.Name, vm.Host, vm.Outcome, vm.Error)
		}
		tw.Flush()
		if len(r.Lost) > 0 {
			fmt.Fprintf(w, "  lost (their host went down; symvirt restart %s): %s\n", r.Job, strings.Join(r.Lost, ", "))
		}
		if len(r.Stranded) > 0 {
			fmt.Fprintf(w, "  stranded (a closing step kept failing; see ERROR): %s\n", strings.Join(r.Stranded, ", "))
		}
		for _, vm := range r.VMs {
			if vm.Note != "" {
				fmt.Fprintf(w, "  note: %s: %s\n", vm.Name, vm.Note)
			}
		}
	case []machine.Result:
		if len(r) == 0 {
			fmt.Fprintln(w, "nothing to move: no VM of a job on that host")
		}
		for _, x := range r {
			printOpResult(w, x)
		}
	default:
		fmt.Fprintf(w, "%v\n", v)
	}
}

// printResultLine: "checkpoint of job j1: checkpointed, checkpoint ID
// complete", "restart of job j1 from checkpoint ID: restored".
func printResultLine(w io.Writer, r machine.Result) {
	fmt.Fprintf(w, "%s of job %s", r.Kind, r.Job)
	if r.Kind == machine.KindRestart && r.CheckpointID != "" {
		fmt.Fprintf(w, " from checkpoint %s", r.CheckpointID)
	}
	fmt.Fprintf(w, ": %s", r.Outcome)
	if r.Kind == machine.KindCheckpoint && r.CheckpointID != "" {
		fmt.Fprintf(w, ", checkpoint %s %s", r.CheckpointID, r.Checkpoint)
	}
	if r.Reason != "" {
		fmt.Fprintf(w, ": %s", r.Reason)
	}
	fmt.Fprintln(w)
}

// liveFlag: every command that moves or copies a running VM copies it live
// by default; --live=false stops it for the copy.
func liveFlag(usage string) cli.Flag {
	return &cli.BoolFlag{Name: "live", Value: true, Usage: usage + " (default; --live=false: stop the VMs for the copy)"}
}

// bandwidthFlag is the one name of a stream's rate cap.
func bandwidthFlag() cli.Flag {
	return &cli.StringFlag{Name: "bandwidth", Usage: "cap each stream, e.g. 200M (bytes/s; default: none)"}
}

func operationCommands() []*cli.Command {
	return []*cli.Command{
		opCommand("checkpoint", "checkpoint every VM of a job together (a consistent cut)", "JOB",
			"Prepares every guest, detaches passthrough devices, saves each VM and re-attaches; prints the checkpoint ID\n"+
				"once it is complete (symvirt checkpoints show ID).",
			[]cli.Flag{liveFlag("copy each VM while it runs, pause it only for its snapshot point, fence its network from there to the last VM's; where QEMU cannot, stop-and-save is used and the reason shown"),
				bandwidthFlag(), &cli.StringFlag{Name: "network-fence", Usage: "job or all: this live checkpoint's network fence " +
					"(default: the job's network_fence; job: hold only the frames from the job's other VMs until each VM's point)"}},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, job string, p coord.ProgressFunc) (any, error) {
				bw, err := parseRate(cmd.String("bandwidth"))
				if err != nil {
					return nil, err
				}
				fence := cmd.String("network-fence")
				if fence != "" && !cmd.Bool("live") {
					return nil, usageErr("checkpoint: --network-fence needs --live")
				}
				return c.Checkpoint(ctx, job, coord.CheckpointOptions{Live: cmd.Bool("live"), Bandwidth: bw, NetworkFence: fence}, p)
			}),
		opCommand("restart", "restore every VM of a job from a checkpoint", "JOB",
			"Restores the job's VMs (from its newest complete checkpoint unless --checkpoint) on their hosts, or elsewhere\n"+
				"for an excluded host; refused while any VM of the job still runs.",
			[]cli.Flag{&cli.StringFlag{Name: "checkpoint", Usage: "checkpoint ID (default: the job's newest complete one)"},
				&cli.StringSliceFlag{Name: "exclude-host", Usage: "restore this host's VMs on other hosts (a host name; repeatable)"}},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, job string, p coord.ProgressFunc) (any, error) {
				return c.Restart(ctx, job, coord.RestartOptions{Checkpoint: cmd.String("checkpoint"),
					ExcludeHosts: cmd.StringSlice("exclude-host")}, p)
			}),
		opCommand("migrate", "move a VM, or every VM of a job, to other hosts", "VM|JOB",
			"Live (pre-copy) by default: each VM runs while its memory is copied and stops only for the last pages;\n"+
				"--live=false stops the VMs for the copy (a consistent cut across the job). The guests are prepared first and\n"+
				"passthrough devices re-attached from the destination's pools.",
			[]cli.Flag{&cli.StringSliceFlag{Name: "to", Required: true, Usage: "destination host name, as in symvirt hosts (repeat for several: round-robin)"},
				liveFlag("pre-copy while the VMs run"),
				&cli.BoolFlag{Name: "dependency-aware", Usage: "freeze each guest's processes without an outside dependency while it migrates (needs --live)"},
				copyStorageFlag()},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, target string, p coord.ProgressFunc) (any, error) {
				if cmd.Bool("dependency-aware") && !cmd.Bool("live") {
					return nil, usageErr("migrate: --dependency-aware needs --live")
				}
				return c.Migrate(ctx, target, coord.MigrateOptions{To: cmd.StringSlice("to"), Live: cmd.Bool("live"),
					DependencyAware: cmd.Bool("dependency-aware"), CopyStorage: cmd.Bool("copy-storage")}, p)
			}),
		opCommand("evacuate", "move every VM off hosts and cordon them (jobs move as jobs)", "HOSTLIST",
			"HOSTLIST is a host name, as in `symvirt hosts`, or a Slurm hostlist such as 'node[1-3,7]'. Every host is\n"+
				"cordoned (no new VM is placed there until symvirt hosts uncordon). Each job with VMs on them is migrated,\n"+
				"live by default, to the other hosts with room. A job with a VM on a host that is down is restarted instead\n"+
				"from its newest complete checkpoint on other hosts (its VMs still running elsewhere stop first); the result\n"+
				"gives the outcome per VM of each job.",
			[]cli.Flag{liveFlag("pre-copy while the VMs run")},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, list string, p coord.ProgressFunc) (any, error) {
				hosts, err := hostlist.Expand(list)
				if err != nil {
					return nil, usageErr("evacuate: %v", err)
				}
				res, err := c.Evacuate(ctx, hosts, cmd.Bool("live"), p)
				if res == nil && err == nil {
					res = []machine.Result{} // nothing to move: [] in JSON, never null
				}
				return res, err
			}),
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/urfave/cli/v3"
)

// opsCommand follows and cancels the coordinator's operations.
func opsCommand() *cli.Command {
	return &cli.Command{
		Name: "ops", Usage: "list, show, watch or cancel the coordinator's operations",
		Description: "Without a subcommand: the running operations, then the finished ones, newest first.",
		Flags:       coordFlags(&cli.IntFlag{Name: "last", Value: 20, Usage: "how many finished operations to list (0: all)"}),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			c, out, err := coordOut(cmd)
			if err != nil {
				return err
			}
			views, err := c.Operations(ctx)
			if err != nil {
				return err
			}
			views = lastOps(views, int(cmd.Int("last")))
			return out.Print(views, func(w io.Writer) { printOpList(w, views) })
		},
		Commands: []*cli.Command{opsShowCommand(), opsWatchCommand(), opsCancelCommand()},
	}
}

// coordOut is a command's coordinator client and output.
func coordOut(cmd *cli.Command) (*coord.Client, cliutil.Output, error) {
	out, err := output(cmd)
	if err != nil {
		return nil, out, err
	}
	c, err := coordClient(cmd)
	return c, out, err
}

// lastOps keeps the running operations and the last n finished ones.
func lastOps(views []coord.OpView, n int) []coord.OpView {
	kept := []coord.OpView{}
	finished := 0
	for _, v := range views {
		if !v.Running {
			if finished++; n > 0 && finished > n {
				continue
			}
		}
		kept = append(kept, v)
	}
	return kept
}

func opsShowCommand() *cli.Command {
	return &cli.Command{
		Name: "show", Usage: "show an operation: its phase and each VM's step", ArgsUsage: "ID",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			id, err := oneArg(cmd, "ID")
			if err != nil {
				return err
			}
			c, out, err := coordOut(cmd)
			if err != nil {
				return err
			}
			v, err := c.Operation(ctx, id)
			if err != nil {
				return err
			}
			return out.Print(v, func(w io.Writer) { printOpView(w, v) })
		},
	}
}

func opsWatchCommand() *cli.Command {
	return &cli.Command{
		Name: "watch", Usage: "follow an operation until it ends (exit code: its outcome)", ArgsUsage: "ID",
		Description: "Shows the operation's phase and VMs on a terminal (one line per phase otherwise) until it ends,\n" +
			"then its result; the exit code is the one its own command gets. With -o json, each new view of the\n" +
			"operation is one JSON line, the last one with its result.",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			id, err := oneArg(cmd, "ID")
			if err != nil {
				return err
			}
			c, out, err := coordOut(cmd)
			if err != nil {
				return err
			}
			show := watchDisplay(out, id)
			v, err := c.WatchOperation(ctx, id, show.update)
			show.done()
			if v.ID == "" {
				return err
			}
			if out.JSON {
				json.NewEncoder(out.W).Encode(v)
			} else if v.Result != nil {
				printOpResult(out.W, *v.Result)
			} else {
				printOpView(out.W, v)
			}
			return err
		},
	}
}

// watcher shows an operation's views as they come.
type watcher struct {
	out   cliutil.Output
	bar   *cliutil.Progress
	phase string
}

func watchDisplay(out cliutil.Output, id string) *watcher {
	return &watcher{out: out, bar: cliutil.NewProgress("operation "+id, !out.JSON)}
}

func (s *watcher) update(v coord.OpView) {
	through := 0
	for _, vm := range v.VMs {
		if !vm.Pending {
			through++
		}
	}
	line := fmt.Sprintf("%s %d/%d", v.Phase, through, len(v.VMs))
	switch {
	case s.out.JSON:
		json.NewEncoder(s.out.W).Encode(v)
	case cliutil.IsTerminal(os.Stderr):
		s.bar.Update(line, 0, 0, 0)
	case v.Phase != s.phase:
		fmt.Fprintf(s.out.W, "%s %s of job %s: %s\n", time.Now().Format("15:04:05"), v.Kind, v.Job, v.Phase)
	}
	s.phase = v.Phase
}

func (s *watcher) done() { s.bar.Done() }

func opsCancelCommand() *cli.Command {
	return &cli.Command{
		Name: "cancel", Usage: "cancel an operation: rolled back before its commit point, finished after it", ArgsUsage: "ID",
		Description: "Waits for the operation's end and says what the cancel led to: rolled back (every VM as before),\n" +
			"finished (it was past its commit point), or nothing to cancel (it had ended).",
		Flags: []cli.Flag{&cli.StringFlag{Name: "reason", Usage: "why (journaled with the operation)"}},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			id, err := oneArg(cmd, "ID")
			if err != nil {
				return err
			}
			c, out, err := coordOut(cmd)
			if err != nil {
				return err
			}
			r, err := c.CancelOperation(ctx, id, cmd.String("reason"))
			if err != nil {
				return err
			}
			return out.Print(r, func(w io.Writer) {
				fmt.Fprintln(w, r.Message)
				if r.View.Result != nil {
					printOpResult(w, *r.View.Result)
				}
			})
		},
	}
}

func printOpList(w io.Writer, views []coord.OpView) {
	if len(views) == 0 {
		fmt.Fprintln(w, "no operations")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tJOB\tSTATE\tSTARTED")
	for _, v := range views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.ID, v.Kind, v.Job, opState(v), v.Started.Local().Format(time.DateTime))
	}
	tw.Flush()
}

// opState: "running: prepare", or the outcome.
func opState(v coord.OpView) string {
	switch {
	case v.Running:
		return "running: " + v.Phase
	case v.Result == nil:
		return "unfinished: " + v.Phase
	}
	return v.Result.Outcome
}

func printOpView(w io.Writer, v coord.OpView) {
	fmt.Fprintf(w, "operation %s: %s of job %s, %s, started %s\n", v.ID, v.Kind, v.Job, opState(v),
		v.Started.Local().Format(time.DateTime))
	if v.Committed {
		fmt.Fprintln(w, "  past its commit point (a cancel no longer rolls it back)")
	}
	if v.Reason != "" {
		fmt.Fprintf(w, "  reason: %s\n", v.Reason)
	}
	if v.FenceFallback != "" {
		fmt.Fprintf(w, "  network fence: all (asked: %s; %s)\n", v.NetworkFence, v.FenceFallback)
	} else if v.NetworkFence != "" {
		fmt.Fprintf(w, "  network fence: %s\n", v.NetworkFence)
	}
	if !v.Deadline.IsZero() {
		fmt.Fprintf(w, "  next deadline: %s\n", v.Deadline.Local().Format(time.TimeOnly))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VM\tHOST\tDEST\tSTEP\tOUTCOME\tERROR")
	for _, vm := range v.VMs {
		step := string(vm.Step)
		if vm.Pending {
			step += " (running)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", vm.Name, vm.Host, vm.Dest, step, vm.Outcome, vm.Error)
	}
	tw.Flush()
}

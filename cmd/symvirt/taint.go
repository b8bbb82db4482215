package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/ebpf/taint"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/urfave/cli/v3"
)

// taintCommand is `symvirt taint`: inside a VM, which processes depend on
// the world outside it (they must keep running during a migration; the
// others may be frozen). guestd runs the tracker and serves it on
// taint.DefaultSocket; `watch` runs a tracker of its own instead.
func taintCommand() *cli.Command {
	socket := func() cli.Flag {
		return &cli.StringFlag{Name: "socket", Value: taint.DefaultSocket, Usage: "guestd's taint API socket",
			Sources: cli.EnvVars("SYMVIRT_TAINT_SOCKET")}
	}
	output := func() cli.Flag {
		return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "text or json"}
	}
	return &cli.Command{
		Name:  "taint",
		Usage: "list the processes of this VM that depend on the outside world (eBPF taint tracker)",
		Commands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list the tainted processes that guestd's tracker knows, and why",
				ArgsUsage: "[PID...]",
				Flags:     []cli.Flag{socket(), output()},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					out, err := cliutil.New(cmd.String("output"))
					if err != nil {
						return err
					}
					list, err := taint.Query(ctx, cmd.String("socket"))
					if err != nil {
						return err
					}
					if cmd.Args().Len() > 0 {
						if list, err = taintFilter(list, cmd.Args().Slice()); err != nil {
							return err
						}
					}
					return out.Print(list, func(w io.Writer) { printTaints(w, list) })
				},
			},
			{
				Name:      "reset",
				Usage:     "untaint a process (or all) until its next outside exchange",
				ArgsUsage: "PID|all",
				Flags:     []cli.Flag{socket(), output()},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					out, err := cliutil.New(cmd.String("output"))
					if err != nil {
						return err
					}
					if cmd.Args().Len() != 1 {
						return fmt.Errorf("reset: want one PID or \"all\"")
					}
					pid := 0
					if a := cmd.Args().First(); a != "all" {
						if pid, err = strconv.Atoi(a); err != nil || pid <= 0 {
							return fmt.Errorf("reset: %q is neither a PID nor \"all\"", a)
						}
					}
					n, err := taint.NewClient(cmd.String("socket")).Reset(ctx, pid)
					if err != nil {
						return err
					}
					return out.Print(n, func(w io.Writer) { fmt.Fprintf(w, "reset; %d processes still tainted\n", n.Tainted) })
				},
			},
			{
				Name: "watch",
				Usage: "run a tracker of its own (root, no guestd needed) for a while, " +
					"printing taints as they happen, then the list",
				Flags: []cli.Flag{
					&cli.DurationFlag{Name: "duration", Value: 10 * time.Second, Usage: "how long to watch"},
					&cli.StringSliceFlag{Name: "ignore", Usage: "peer CIDR that does not taint, e.g. the management network (repeatable)"},
					&cli.BoolFlag{Name: "no-scan", Usage: "do not taint processes for connections they had before the watch"},
					output(),
				},
				Action: taintWatch,
			},
		},
	}
}

func taintWatch(ctx context.Context, cmd *cli.Command) error {
	out, err := output(cmd)
	if err != nil {
		return err
	}
	var ignore []netip.Prefix
	for _, s := range cmd.StringSlice("ignore") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return fmt.Errorf("--ignore %q: %w", s, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		ignore = append(ignore, p)
	}
	tr, err := taint.Open(taint.Options{Ignore: ignore, IPCExempt: taint.DefaultIPCExempt, NoScan: cmd.Bool("no-scan")})
	if err != nil {
		return err
	}
	defer tr.Close()

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cmd.Duration("duration"))
	defer cancel()
	seen := make(map[int]bool)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
		}
		if out.JSON {
			continue
		}
		for _, t := range tr.Tainted() {
			if !seen[t.PID] {
				seen[t.PID] = true
				fmt.Fprintf(out.W, "%s tainted: %s\n", t.Since.Format("15:04:05.000"), describeTaint(t))
			}
		}
	}
	list := tr.Tainted()
	return out.Print(list, func(w io.Writer) {
		fmt.Fprintln(w)
		printTaints(w, list)
	})
}

func taintFilter(list []taint.Taint, args []string) ([]taint.Taint, error) {
	want := make(map[int]bool)
	for _, a := range args {
		pid, err := strconv.Atoi(a)
		if err != nil {
			return nil, fmt.Errorf("list: %q is not a PID", a)
		}
		want[pid] = true
	}
	var out []taint.Taint
	for _, t := range list {
		if want[t.PID] {
			out = append(out, t)
		}
	}
	return out, nil
}

func describeTaint(t taint.Taint) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d (%s) %s", t.PID, t.Comm, t.Kind)
	if t.Channel != "" {
		fmt.Fprintf(&b, " over %s", t.Channel)
	}
	if t.Via != 0 {
		fmt.Fprintf(&b, " from %d", t.Via)
	}
	if t.Peer.IsValid() {
		fmt.Fprintf(&b, ", peer %s", t.Peer)
	}
	return b.String()
}

func printTaints(w io.Writer, list []taint.Taint) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no tainted processes")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMM\tKIND\tVIA\tPEER\tSINCE")
	for _, t := range list {
		kind := t.Kind
		if t.Channel != "" {
			kind += "/" + t.Channel
		}
		via, peer := "-", "-"
		if t.Via != 0 {
			via = strconv.Itoa(t.Via)
		}
		if t.Peer.IsValid() {
			peer = t.Peer.String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", t.PID, t.Comm, kind, via, peer, t.Since.Local().Format(time.DateTime))
	}
	tw.Flush()
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/ebpf/taint"
	"github.com/symvirt/symvirt/guestd"
	"github.com/symvirt/symvirt/guestd/hookclient"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/urfave/cli/v3"
)

// guestdCommand is "symvirt guestd", the agent inside the VM.
func guestdCommand() *cli.Command {
	return &cli.Command{
		Name:  "guestd",
		Usage: "run the guest agent (inside the VM): safe points, NIC hand-off and outcomes for symvirt operations",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "channel", Value: "virtio-serial", Usage: "host channel: virtio-serial, vsock or unix:PATH"},
			&cli.StringFlag{Name: "port-name", Value: guestd.DefaultPortName, Usage: "virtio-serial port name"},
			&cli.Uint32Flag{Name: "vsock-port", Value: guestd.DefaultVsockPort, Usage: "vsock port to listen on"},
			&cli.StringFlag{Name: "hook-socket", Value: guestd.DefaultHookSocket, Usage: "hook socket for applications"},
			&cli.StringFlag{Name: "hook-dir", Value: guestd.DefaultHookDir, Usage: "hook scripts, run in name order (only files owned by root and writable by root alone, in such a directory)"},
			&cli.StringFlag{Name: "hook-group", Usage: "group (name or gid) whose members may use the hook socket (root:GROUP 0660; default: root only)"},
			&cli.IntFlag{Name: "hook-max-per-uid", Value: guestd.DefaultHookMaxPerUID, Usage: "hook socket connections one non-root user may hold"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "address for Prometheus /metrics, e.g. :9465 (default: none)"},
			&cli.DurationFlag{Name: "nic-wait", Value: 10 * time.Second, Usage: "how long RESUME waits for replacement NICs"},
			&cli.StringFlag{Name: "sys-root", Value: "/", Usage: "prefix of /sys and /dev (tests)"},
			&cli.BoolFlag{Name: "taint", Value: true, Usage: "run the eBPF taint tracker (which processes depend on the outside world), " +
				"needed for dependency-aware migration (default on; --taint=false disables); if it cannot load, guestd runs without it and refuses such rounds"},
			&cli.StringFlag{Name: "taint-socket", Value: taint.DefaultSocket, Usage: "where \"symvirt taint\" reaches the tracker (\"-\": nowhere)"},
			&cli.StringSliceFlag{Name: "taint-ignore", Usage: "peer CIDR or address whose traffic does not taint, e.g. the management network (repeatable)"},
			&cli.StringFlag{Name: "cgroup-root", Usage: "cgroup v2 hierarchy for freezing (default: the mounted one, else one mounted at " + guestd.DefaultCgroupMount + ")"},
			&cli.StringSliceFlag{Name: "freeze-allow", Value: guestd.DefaultFreezeAllow,
				Usage: "processes (comm) never frozen by dependency-aware migration; the default are the local hubs tainted " +
					"processes use (journal, D-Bus); giving the flag replaces the list, --freeze-allow '' empties it"},
			&cli.DurationFlag{Name: "freeze-max", Value: guestd.DefaultFreezeMax, Usage: "thaw frozen processes after this long even without RESUME (0: never)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			log, err := newLogger(cmd.String("log-level"))
			if err != nil {
				return err
			}
			ignore, err := parsePrefixes(cmd.StringSlice("taint-ignore"))
			if err != nil {
				return err
			}
			freezeMax := cmd.Duration("freeze-max")
			if freezeMax == 0 {
				freezeMax = -1 // Config: <0 is "no bound", 0 the default
			}
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return guestd.Run(ctx, guestd.Config{
				Channel:       cmd.String("channel"),
				PortName:      cmd.String("port-name"),
				VsockPort:     cmd.Uint32("vsock-port"),
				HookSocket:    cmd.String("hook-socket"),
				HookDir:       cmd.String("hook-dir"),
				HookGroup:     cmd.String("hook-group"),
				HookMaxPerUID: int(cmd.Int("hook-max-per-uid")),
				MetricsListen: cmd.String("metrics-listen"),
				NICWait:       cmd.Duration("nic-wait"),
				SysRoot:       cmd.String("sys-root"),
				Logger:        log,
				Taint:         cmd.Bool("taint"),
				TaintSocket:   cmd.String("taint-socket"),
				TaintIgnore:   ignore,
				CgroupRoot:    cmd.String("cgroup-root"),
				FreezeAllow:   nonEmpty(cmd.StringSlice("freeze-allow")),
				FreezeMax:     freezeMax,
			})
		},
	}
}

// parsePrefixes parses CIDRs, taking a bare address as a one-address prefix.
func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("--taint-ignore %q: %w", s, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// nonEmpty drops empty elements, keeping the result non-nil: an empty
// --freeze-allow means "allow none", not "the default".
func nonEmpty(ss []string) []string {
	out := []string{}
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// hookCommand is "symvirt hook", the hook socket for shell scripts.
func hookCommand() *cli.Command {
	flags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "socket", Value: hookclient.Path(), Usage: "guestd hook socket ($SYMVIRT_HOOK_SOCKET)"},
			&cli.StringFlag{Name: "output", Value: "text", Usage: "text or json"},
			&cli.DurationFlag{Name: "timeout", Usage: "give up after this long (default: wait as long as it takes)"},
		}
	}
	// run opens the socket (registering as name, if set) and runs f with a
	// context bounded by --timeout and interrupted by SIGINT/SIGTERM.
	run := func(name string, f func(context.Context, *hookclient.Client, cliutil.Output) error) cli.ActionFunc {
		return func(ctx context.Context, cmd *cli.Command) error {
			out, err := output(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if d := cmd.Duration("timeout"); d > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, d)
				defer cancel()
			}
			c, err := hookclient.Open(cmd.String("socket"), name)
			if err != nil {
				return err
			}
			defer c.Close()
			return f(ctx, c, out)
		}
	}
	return &cli.Command{
		Name:  "hook",
		Usage: "talk to guestd's hook socket from a script (inside the VM)",
		Commands: []*cli.Command{
			{
				Name:  "wait",
				Usage: "block until an operation is pending; print OP ID",
				Flags: flags(),
				Action: run("", func(ctx context.Context, c *hookclient.Client, out cliutil.Output) error {
					p, err := c.Wait(ctx)
					if err != nil {
						return err
					}
					return out.Print(map[string]string{"op": p.Op, "id": p.ID}, func(w io.Writer) {
						fmt.Fprintln(w, p.Op, p.ID)
					})
				}),
			},
			{
				Name: "sync",
				Usage: "report a safe point and block until the operation's outcome; print it. " +
					"Registers as hook-cli for this call only: rounds wait only for apps registered when they start",
				Flags: flags(),
				Action: run("hook-cli", func(ctx context.Context, c *hookclient.Client, out cliutil.Output) error {
					o, err := c.Sync(ctx)
					if err != nil {
						return err
					}
					return out.Print(map[string]string{"outcome": o.Outcome, "op": o.Op, "id": o.ID}, func(w io.Writer) {
						fmt.Fprintln(w, o.Outcome)
					})
				}),
			},
			{
				Name:  "status",
				Usage: "print the current round: idle, or pending OP ID synced=N/M",
				Flags: flags(),
				Action: run("", func(ctx context.Context, c *hookclient.Client, out cliutil.Output) error {
					s, err := c.Status()
					if err != nil {
						return err
					}
					v := map[string]any{"pending": s.Pending}
					if s.Pending {
						v["op"], v["id"], v["synced"], v["registered"] = s.Op, s.ID, s.Synced, s.Registered
					}
					return out.Print(v, func(w io.Writer) {
						if !s.Pending {
							fmt.Fprintln(w, "idle")
							return
						}
						fmt.Fprintf(w, "pending %s %s synced=%d/%d\n", s.Op, s.ID, s.Synced, s.Registered)
					})
				}),
			},
		},
	}
}

package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/urfave/cli/v3"
)

func hostFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "host",
		Usage:   "hostd API: a unix socket path or host:port",
		Value:   "/var/lib/symvirt/hostd.sock",
		Sources: cli.EnvVars("SYMVIRT_HOST"),
	}
}

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "text or json"}
}

// output is the command's --output, writing to the CLI's stdout.
func output(cmd *cli.Command) (cliutil.Output, error) {
	out, err := cliutil.New(cmd.String("output"))
	if err != nil {
		return out, usageErr("%v", err)
	}
	out.W = cmd.Root().Writer
	return out, nil
}

func vmCommand() *cli.Command {
	named := func(name, usage string, fn func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error), flags ...cli.Flag) *cli.Command {
		return &cli.Command{
			Name: name, Usage: usage, ArgsUsage: "VM",
			Flags: flags,
			Action: func(ctx context.Context, cmd *cli.Command) error {
				vm, err := oneArg(cmd, "VM")
				if err != nil {
					return err
				}
				out, err := output(cmd)
				if err != nil {
					return err
				}
				res, err := fn(ctx, hostdClient(cmd.String("host")), vm, cmd)
				if err != nil {
					return err
				}
				return printResult(out, res)
			},
		}
	}
	action := func(a string) func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error) {
		return func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error) {
			return c.Action(ctx, vm, a)
		}
	}
	return &cli.Command{
		Name:  "vm",
		Usage: "manage the VMs of one host (talks to its hostd)",
		Flags: []cli.Flag{hostFlag(), outputFlag()},
		Commands: []*cli.Command{
			{
				Name: "create", Usage: "create a VM from a spec file",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "VM spec (YAML)"},
					&cli.BoolFlag{Name: "start", Usage: "start it too"},
				},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					out, err := output(cmd)
					if err != nil {
						return err
					}
					spec, err := hostd.LoadSpec(cmd.String("file"))
					if err != nil {
						return err
					}
					info, err := hostdClient(cmd.String("host")).Create(ctx, spec, cmd.Bool("start"))
					if err != nil {
						return err
					}
					return printResult(out, info)
				},
			},
			{
				Name: "list", Usage: "list VMs",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					out, err := output(cmd)
					if err != nil {
						return err
					}
					vms, err := hostdClient(cmd.String("host")).List(ctx)
					if err != nil {
						return err
					}
					return out.Print(vms, func(w io.Writer) {
						tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
						fmt.Fprintln(tw, "NAME\tSTATE\tPID\tMEMORY\tDETACHED")
						for _, v := range vms {
							fmt.Fprintf(tw, "%s\t%s\t%d\t%dM\t%s\n", v.Name, v.State, v.PID, v.Spec.Memory, strings.Join(v.Detached, ","))
						}
						tw.Flush()
					})
				},
			},
			named("status", "show a VM", func(ctx context.Context, c *hostd.Client, vm string, _ *cli.Command) (any, error) {
				return c.Status(ctx, vm)
			}),
			named("start", "start a VM", action("start")),
			named("pause", "pause a VM's vCPUs", action("pause")),
			named("resume", "resume a paused VM", action("resume")),
			named("stop", "stop a VM (power-down, then quit, then kill)", func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error) {
				return c.Stop(ctx, vm, cmd.Duration("timeout"))
			}, &cli.DurationFlag{Name: "timeout", Usage: "grace period before QEMU is quit"}),
			named("delete", "delete a stopped VM and its state", func(ctx context.Context, c *hostd.Client, vm string, _ *cli.Command) (any, error) {
				return deleted{vm}, c.Delete(ctx, vm)
			}),
			{
				Name: "detach", Usage: "hot-unplug a passthrough device", ArgsUsage: "VM DEVICE",
				Action: func(ctx context.Context, cmd *cli.Command) error { return deviceAction(ctx, cmd, "detach") },
			},
			{
				Name: "attach", Usage: "hot-plug a detached passthrough device", ArgsUsage: "VM DEVICE",
				Action: func(ctx context.Context, cmd *cli.Command) error { return deviceAction(ctx, cmd, "attach") },
			},
			named("checkpoint", "save a VM's memory, devices and disks to a directory on its host",
				func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error) {
					live := cmd.Bool("live")
					if cmd.Bool("stop") {
						if cmd.IsSet("live") && live {
							return nil, usageErr("vm checkpoint: --stop and --live: a VM that stops after its checkpoint is saved stopped")
						}
						live = false
					}
					bw, err := parseRate(cmd.String("bandwidth"))
					if err != nil {
						return nil, err
					}
					p := cliutil.NewProgress("checkpoint "+vm, true)
					defer p.Done()
					return c.Checkpoint(ctx, vm, hostd.CheckpointOptions{Dir: cmd.String("dir"), Stop: cmd.Bool("stop"),
						NoGuest: cmd.Bool("no-guest"), Live: live, Bandwidth: bw}, progressTo(p))
				},
				liveFlag("copy the VM while it runs; pause it only for its snapshot point (not with --stop)"),
				bandwidthFlag(),
				&cli.StringFlag{Name: "dir", Required: true, Usage: "checkpoint directory (must not exist)"},
				&cli.BoolFlag{Name: "stop", Usage: "stop the VM after the checkpoint"},
				&cli.BoolFlag{Name: "no-guest", Usage: "skip the guest cooperation round"}),
			{
				Name: "restore", Usage: "start a VM from a checkpoint directory",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "dir", Required: true, Usage: "checkpoint directory (from vm checkpoint, or a VM's directory of a job checkpoint)"},
					&cli.StringFlag{Name: "name", Usage: "restore under another name"},
					&cli.BoolFlag{Name: "no-guest", Usage: "do not tell the guest"},
				},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					out, err := output(cmd)
					if err != nil {
						return err
					}
					p := cliutil.NewProgress("restore", true)
					info, err := hostdClient(cmd.String("host")).Restore(ctx, hostd.RestoreOptions{
						Dir: cmd.String("dir"), Name: cmd.String("name"), NoGuest: cmd.Bool("no-guest")}, progressTo(p))
					p.Done()
					if err != nil {
						return err
					}
					return printResult(out, info)
				},
			},
			named("drill", "run a cooperation round with the guest that changes nothing (is the guest cooperating?)",
				func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error) {
					return c.Drill(ctx, vm)
				}),
			named("rejuvenate", "restart the VM's QEMU with its RAM in place (warm reboot)",
				func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error) {
					return c.Rejuvenate(ctx, vm, hostd.RejuvenateOptions{QEMU: cmd.String("qemu-binary"), NoGuest: cmd.Bool("no-guest")})
				},
				&cli.StringFlag{Name: "qemu-binary", Usage: "start the new QEMU from this binary (upgrade)"},
				&cli.BoolFlag{Name: "no-guest", Usage: "skip the guest cooperation round"}),
			named("migrate", "live-migrate (pre-copy) a VM straight to another hostd, without a coordinator",
				func(ctx context.Context, c *hostd.Client, vm string, cmd *cli.Command) (any, error) {
					to := cmp.Or(cmd.String("to-addr"), cmd.String("to"))
					if to == "" {
						return nil, usageErr("vm migrate: --to-addr ADDR is missing (the destination hostd's API address)")
					}
					bw, err := parseRate(cmp.Or(cmd.String("bandwidth"), cmd.String("max-bandwidth")))
					if err != nil {
						return nil, err
					}
					p := cliutil.NewProgress("migrate "+vm, true)
					defer p.Done()
					return c.Migrate(ctx, vm, hostd.MigrateOptions{To: to, MaxBandwidth: bw,
						DowntimeLimit: cmd.Duration("downtime-limit"), NoGuest: cmd.Bool("no-guest"),
						DependencyAware: cmd.Bool("dependency-aware"), CopyStorage: cmd.Bool("copy-storage")}, progressTo(p))
				},
				&cli.StringFlag{Name: "to-addr", Usage: "destination hostd's API address (host:port or unix socket path); between hosts with certificates use symvirt migrate VM --to HOST"},
				&cli.StringFlag{Name: "to", Hidden: true, Usage: "old name of --to-addr"},
				bandwidthFlag(),
				&cli.StringFlag{Name: "max-bandwidth", Hidden: true, Usage: "old name of --bandwidth"},
				&cli.DurationFlag{Name: "downtime-limit", Usage: "QEMU's downtime target"},
				&cli.BoolFlag{Name: "dependency-aware", Usage: "freeze the guest's processes that do not depend on the outside while it migrates"},
				&cli.BoolFlag{Name: "no-guest", Usage: "skip the guest cooperation round"},
				copyStorageFlag()),
		},
	}
}

func deviceAction(ctx context.Context, cmd *cli.Command, action string) error {
	if cmd.Args().Len() != 2 {
		return usageErr("vm %s: want VM DEVICE, got %d arguments", action, cmd.Args().Len())
	}
	out, err := output(cmd)
	if err != nil {
		return err
	}
	info, err := hostdClient(cmd.String("host")).Device(ctx, cmd.Args().Get(0), cmd.Args().Get(1), action)
	if err != nil {
		return err
	}
	return printResult(out, info)
}

func oneArg(cmd *cli.Command, what string) (string, error) {
	if cmd.Args().Len() != 1 {
		name := strings.TrimPrefix(cmd.FullName(), "symvirt ")
		return "", usageErr("%s: want exactly one %s argument, got %d (symvirt %s --help)", name, what, cmd.Args().Len(), name)
	}
	return cmd.Args().First(), nil
}

func progressTo(p *cliutil.Progress) hostd.ProgressFunc {
	return func(pr hostd.Progress) { p.Update(pr.Phase, pr.Transferred, pr.Total, pr.MbPS) }
}

// parseRate parses a byte rate such as 100M or 1G (per second).
func parseRate(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mib, err := hostd.ParseSize(s)
	if err != nil {
		return 0, usageErr("--bandwidth %q: %v", s, err)
	}
	return int64(mib) << 20, nil
}

// printResult prints any result: JSON, or a short text form.
func printResult(out cliutil.Output, v any) error {
	return out.Print(v, func(w io.Writer) {
		switch r := v.(type) {
		case hostd.VMInfo:
			fmt.Fprintf(w, "%s: %s", r.Name, r.State)
			if r.PID > 0 {
				fmt.Fprintf(w, " (pid %d)", r.PID)
			}
			if len(r.Detached) > 0 {
				fmt.Fprintf(w, ", detached: %s", strings.Join(r.Detached, ","))
			}
			for _, id := range r.Present {
				fmt.Fprintf(w, ", %s present", id)
				if slot := r.Devices[id]; slot != "" {
					fmt.Fprintf(w, " (pool %s)", slot)
				}
			}
			fmt.Fprintln(w)
		case hostd.CheckpointResult:
			kind := "stop-and-save"
			if r.Live {
				kind = "live"
			}
			stopped := r.Downtime
			if r.Live && r.Pause > 0 {
				stopped = r.Pause // QEMU's events, finer than its downtime figure
			}
			fmt.Fprintf(w, "checkpoint %s (%s): %s in %s, vCPUs stopped %s\n", r.Dir, kind, cliutil.Bytes(r.Bytes),
				r.Duration.Round(time.Millisecond), stopped.Round(100*time.Microsecond))
			if r.Fallback != "" {
				fmt.Fprintf(w, "  not live: %s\n", r.Fallback)
			}
			for _, f := range r.Manifest.Files {
				chunks := ""
				if f.Chunks != "" {
					chunks = " (chunks: " + f.Chunks + ")"
				}
				fmt.Fprintf(w, "  %s %s sha256:%s%s\n", f.Name, cliutil.Bytes(f.Size), f.SHA256, chunks)
			}
		case hostd.DrillResult:
			fmt.Fprintf(w, "guest cooperates: ready after %s, round done in %s\n", r.Ready.Round(time.Microsecond), r.Round.Round(time.Microsecond))
		case hostd.RejuvenateResult:
			printRejuvenate(w, r)
		case []hostd.RejuvenateResult:
			for _, x := range r {
				printRejuvenate(w, x)
			}
		case hostd.MigrateResult:
			fmt.Fprintf(w, "migrated %s to %s: %s in %s (QEMU: total %s, downtime %s)\n", r.VM.Name, r.Destination,
				cliutil.Bytes(r.Transferred), r.Duration.Round(time.Millisecond), r.TotalTime, r.Downtime)
		case deleted:
			fmt.Fprintf(w, "%s: deleted\n", r.Deleted)
		default:
			fmt.Fprintf(w, "%v\n", v)
		}
	})
}

// deleted is the result of vm delete.
type deleted struct {
	Deleted string `json:"deleted"`
}

// hostdClient is a client of the hostd at addr, the daemon errors name.
func hostdClient(addr string) *hostd.Client {
	target = hostdTarget(addr)
	return hostd.NewClient(addr)
}

func printRejuvenate(w io.Writer, r hostd.RejuvenateResult) {
	switch {
	case r.Skipped != "":
		fmt.Fprintf(w, "%s: skipped: %s\n", r.VM, r.Skipped)
	case r.Error != "":
		fmt.Fprintf(w, "%s: FAILED: %s\n", r.VM, r.Error)
	default:
		fb := ""
		if r.Fallback {
			fb = " (new binary failed; old binary took it back)"
		}
		fmt.Fprintf(w, "%s: qemu pid %d -> %d (%s), vCPUs stopped %s, device state %s%s\n", r.VM, r.OldPID, r.NewPID,
			r.QEMU, r.Downtime.Round(time.Millisecond), cliutil.Bytes(r.StateBytes), fb)
	}
}

func rejuvenateCommand() *cli.Command {
	return &cli.Command{
		Name:        "rejuvenate",
		Usage:       "restart every QEMU of a host with guest RAM in place (or, with --hostd, hostd itself)",
		Description: "Talks to one hostd (--host, SYMVIRT_HOST; a hostd API address, as for `symvirt vm`).",
		Flags: []cli.Flag{
			hostFlag(),
			outputFlag(),
			&cli.StringFlag{Name: "qemu-binary", Usage: "start the new QEMUs from this binary (upgrade)"},
			&cli.IntFlag{Name: "parallel", Value: 1, Usage: "VMs restarted at once"},
			&cli.BoolFlag{Name: "hostd", Usage: "restart hostd itself instead (VMs untouched)"},
			&cli.StringFlag{Name: "hostd-binary", Usage: "with --hostd: the new hostd binary (upgrade)"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			host := cmd.String("host")
			switch cmd.Args().Len() {
			case 0:
			case 1: // the hostd address, as before --host
				host = cmd.Args().First()
			default:
				return usageErr("rejuvenate: want no argument (the hostd is --host), got %d", cmd.Args().Len())
			}
			out, err := output(cmd)
			if err != nil {
				return err
			}
			c := hostdClient(host)
			if cmd.Bool("hostd") {
				before, err := c.Host(ctx)
				if err != nil {
					return err
				}
				if err := c.RestartHostd(ctx, cmd.String("hostd-binary")); err != nil {
					return err
				}
				// Wait for the new process to answer.
				deadline := time.Now().Add(30 * time.Second)
				for {
					time.Sleep(200 * time.Millisecond)
					after, err := c.Host(ctx)
					if err == nil && after.StartedAt.After(before.StartedAt) {
						vms, _ := c.List(ctx)
						return out.Print(map[string]any{"pid": after.PID, "vms": len(vms)}, func(w io.Writer) {
							fmt.Fprintf(w, "hostd restarted (pid %d, started %s); %d VMs re-adopted\n", after.PID,
								after.StartedAt.Format(time.RFC3339), len(vms))
						})
					}
					if time.Now().After(deadline) {
						return fmt.Errorf("hostd did not come back within 30s (last error: %v)", err)
					}
				}
			}
			if cmd.Int("parallel") < 1 {
				return usageErr("--parallel %d: want at least 1", cmd.Int("parallel"))
			}
			res, err := c.RejuvenateHost(ctx, hostd.RejuvenateOptions{QEMU: cmd.String("qemu-binary"), Parallel: int(cmd.Int("parallel"))})
			if err != nil {
				return err
			}
			if err := printResult(out, res); err != nil {
				return err
			}
			for _, r := range res {
				if r.Error != "" {
					return fmt.Errorf("%s: %s", r.VM, r.Error)
				}
			}
			return nil
		},
	}
}

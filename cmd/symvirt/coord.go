package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/unixsock"
	"github.com/urfave/cli/v3"
	"go.yaml.in/yaml/v3"
)

var tlsFlags = []cli.Flag{
	&cli.StringFlag{Name: "tls-cert", Sources: cli.EnvVars("SYMVIRT_TLS_CERT"), Usage: "this party's certificate (symvirt certs issue)"},
	&cli.StringFlag{Name: "tls-key", Sources: cli.EnvVars("SYMVIRT_TLS_KEY")},
	&cli.StringFlag{Name: "tls-ca", Sources: cli.EnvVars("SYMVIRT_TLS_CA"), Usage: "the cluster CA"},
}

func coordDaemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "coord",
		Usage: "run the coordinator: job checkpoint, restart, migrate and evacuate across hosts",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: "/var/lib/symvirt-coord", Usage: "the coordinator's store (bbolt)"},
			&cli.StringFlag{Name: "checkpoint-dir", Required: true, Usage: "checkpoint root, the same path on every host (shared storage)"},
			&cli.StringFlag{Name: "socket", Usage: "API unix socket (default STATE_DIR/coord.sock)"},
			&cli.StringFlag{Name: "listen", Usage: "API TCP address (mutual TLS with client certificates)"},
			metricsAddressFlag,
			&cli.DurationFlag{Name: "lease", Value: 30 * time.Second, Usage: "how long a hostd keeps a VM paused without the coordinator"},
			&cli.DurationFlag{Name: "prepare-timeout", Value: 60 * time.Second},
			&cli.DurationFlag{Name: "step-timeout", Value: 60 * time.Second},
			&cli.DurationFlag{Name: "transfer-timeout", Value: 10 * time.Minute},
			&cli.StringFlag{Name: "log-level", Value: "info"},
		}, tlsFlags...),
		Action: runCoord,
	}
}

func runCoord(ctx context.Context, cmd *cli.Command) error {
	log, err := newLogger(cmd.String("log-level"))
	if err != nil {
		return err
	}
	cfg := coord.Config{StateDir: cmd.String("state-dir"), CheckpointDir: cmd.String("checkpoint-dir"),
		Lease: cmd.Duration("lease"), PrepareTimeout: cmd.Duration("prepare-timeout"),
		StepTimeout: cmd.Duration("step-timeout"), TransferTimeout: cmd.Duration("transfer-timeout"),
		Logger: log, CrashAt: os.Getenv("SYMVIRT_COORD_CRASH_AT")}
	if !filepath.IsAbs(cfg.CheckpointDir) {
		return fmt.Errorf("--checkpoint-dir %q: want an absolute path", cfg.CheckpointDir)
	}
	var serverTLS *tls.Config
	if cert := cmd.String("tls-cert"); cert != "" {
		if cfg.HostTLS, err = pki.ClientConfig(cert, cmd.String("tls-key"), cmd.String("tls-ca"), pki.RoleHostd); err != nil {
			return err
		}
		if serverTLS, err = pki.ServerConfig(cert, cmd.String("tls-key"), cmd.String("tls-ca"), pki.RoleClient); err != nil {
			return err
		}
		if cfg.Signer, err = pki.LoadSigner(cert, cmd.String("tls-key")); err != nil {
			return err
		}
	}
	if err := unixsock.PrivateDir(cfg.StateDir); err != nil {
		return err
	}
	c, err := coord.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	sock := cmd.String("socket")
	if sock == "" {
		sock = coord.SocketPath(cfg.StateDir)
	}
	listen := cmd.String("listen")
	if listen != "" && serverTLS == nil {
		return fmt.Errorf("--listen needs --tls-cert, --tls-key and --tls-ca: the coordinator's TCP API is mutual TLS only")
	}
	if err := serveCoordMetrics(ctx, log, cmd, c); err != nil {
		return err
	}
	return serve(log, "coord", c.Handler(), sock, listen, serverTLS, "state_dir", cfg.StateDir)
}

var coordFlag = &cli.StringFlag{Name: "coord", Sources: cli.EnvVars("SYMVIRT_COORD"),
	Value: "/var/lib/symvirt-coord/coord.sock", Usage: "coordinator API: unix socket path or host:port (mutual TLS)"}

func coordClient(cmd *cli.Command) (*coord.Client, error) {
	var cfg *tls.Config
	if cert := cmd.String("tls-cert"); cert != "" {
		var err error
		if cfg, err = pki.ClientConfig(cert, cmd.String("tls-key"), cmd.String("tls-ca"), pki.RoleCoord); err != nil {
			return nil, err
		}
	}
	return coord.NewClient(cmd.String("coord"), cfg), nil
}

// opCommand builds a command that runs one coordinator operation.
func opCommand(name, usage, args string, flags []cli.Flag, run func(ctx context.Context, c *coord.Client, cmd *cli.Command, p coord.ProgressFunc) (any, error)) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: args,
		Flags: append(append([]cli.Flag{coordFlag, outputFlag}, tlsFlags...), flags...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			out, err := cliutil.New(cmd.String("output"))
			if err != nil {
				return err
			}
			c, err := coordClient(cmd)
			if err != nil {
				return err
			}
			bar := cliutil.NewProgress(name+" "+cmd.Args().First(), true)
			res, err := run(ctx, c, cmd, func(p coord.Progress) {
				bar.Update(fmt.Sprintf("%s %d/%d", p.Phase, p.Done, p.Total), 0, 0, 0)
			})
			bar.Done()
			if res != nil {
				out.Print(res, func(w io.Writer) { printOpResult(w, res) })
			}
			return err
		},
	}
}

func printOpResult(w io.Writer, v any) {
	switch r := v.(type) {
	case machine.Result:
		fmt.Fprintf(w, "%s of job %s: %s", r.Kind, r.Job, r.Outcome)
		if r.CheckpointID != "" {
			fmt.Fprintf(w, " (checkpoint %s: %s)", r.CheckpointID, r.Checkpoint)
		}
		if r.Reason != "" {
			fmt.Fprintf(w, ": %s", r.Reason)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  VM\tHOST\tOUTCOME\tERROR")
		for _, vm := range r.VMs {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", vm.Name, vm.Host, vm.Outcome, vm.Error)
		}
		tw.Flush()
		if len(r.Lost) > 0 {
			fmt.Fprintf(w, "  lost (their host went down): %s\n", strings.Join(r.Lost, ", "))
		}
		for _, vm := range r.VMs {
			if vm.Note != "" {
				fmt.Fprintf(w, "  note: %s: %s\n", vm.Name, vm.Note)
			}
		}
	case []machine.Result:
		for _, x := range r {
			printOpResult(w, x)
		}
	default:
		fmt.Fprintf(w, "%v\n", v)
	}
}

func jobCommands() []*cli.Command {
	return []*cli.Command{
		coordDaemonCommand(),
		opCommand("checkpoint", "checkpoint every VM of a job together (consistent cut)", "JOB",
			[]cli.Flag{&cli.BoolFlag{Name: "live", Value: true,
				Usage: "copy each VM while it runs, pause it only for its snapshot point, fence its network from there to the last VM's (--live=false: stop, save, resume; used anyway where QEMU or the kernel cannot, with the reason shown)"},
				&cli.StringFlag{Name: "bandwidth", Usage: "cap each live stream, e.g. 200M (bytes/s)"}},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, p coord.ProgressFunc) (any, error) {
				job, err := oneArg(cmd, "JOB")
				if err != nil {
					return nil, err
				}
				bw, err := parseRate(cmd.String("bandwidth"))
				if err != nil {
					return nil, err
				}
				return c.Checkpoint(ctx, job, coord.CheckpointOptions{Live: cmd.Bool("live"), Bandwidth: bw}, p)
			}),
		opCommand("restart", "restore every VM of a job from a checkpoint", "JOB",
			[]cli.Flag{&cli.StringFlag{Name: "checkpoint", Usage: "checkpoint id (default: the newest complete)"},
				&cli.StringSliceFlag{Name: "exclude-host", Usage: "restore this host's VMs elsewhere"}},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, p coord.ProgressFunc) (any, error) {
				job, err := oneArg(cmd, "JOB")
				if err != nil {
					return nil, err
				}
				return c.Restart(ctx, job, coord.RestartOptions{Checkpoint: cmd.String("checkpoint"),
					ExcludeHosts: cmd.StringSlice("exclude-host")}, p)
			}),
		opCommand("migrate", "live-migrate a VM or a whole job to other hosts", "VM|JOB",
			[]cli.Flag{&cli.StringSliceFlag{Name: "to", Required: true, Usage: "destination host (repeat for several)"},
				&cli.BoolFlag{Name: "live", Usage: "pre-copy while the VMs run (default: stop-and-copy, consistent cut)"},
				&cli.BoolFlag{Name: "dependency-aware", Usage: "freeze each guest's processes without an outside dependency while it migrates (implies --live)"}},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, p coord.ProgressFunc) (any, error) {
				target, err := oneArg(cmd, "VM|JOB")
				if err != nil {
					return nil, err
				}
				return c.Migrate(ctx, target, coord.MigrateOptions{To: cmd.StringSlice("to"), Live: cmd.Bool("live"),
					DependencyAware: cmd.Bool("dependency-aware")}, p)
			}),
		opCommand("evacuate", "move every VM off a host (jobs move as jobs)", "HOST",
			[]cli.Flag{&cli.BoolFlag{Name: "live", Usage: "pre-copy while the VMs run"}},
			func(ctx context.Context, c *coord.Client, cmd *cli.Command, p coord.ProgressFunc) (any, error) {
				host, err := oneArg(cmd, "HOST")
				if err != nil {
					return nil, err
				}
				return c.Evacuate(ctx, host, cmd.Bool("live"), p)
			}),
		{
			Name: "status", Usage: "hosts and jobs as the hostds report them",
			Flags: append([]cli.Flag{coordFlag, outputFlag}, tlsFlags...),
			Action: func(ctx context.Context, cmd *cli.Command) error {
				return query(ctx, cmd, "/v1/status", &coord.Status{}, func(w io.Writer, v any) {
					st := v.(*coord.Status)
					for _, h := range st.Hosts {
						up := "up"
						if !h.Up {
							up = "DOWN: " + h.Error
						}
						fmt.Fprintf(w, "host %s (%s): %s, %d VMs\n", h.Name, h.Addr, up, h.VMs)
					}
					for _, j := range st.Jobs {
						fmt.Fprintf(w, "job %s", j.Name)
						if j.Operation != "" {
							fmt.Fprintf(w, " [%s]", j.Operation)
						}
						fmt.Fprintln(w)
						names := make([]string, 0, len(j.VMs))
						for n := range j.VMs {
							names = append(names, n)
						}
						sort.Strings(names)
						for _, n := range names {
							fmt.Fprintf(w, "  %s on %s\n", n, j.VMs[n])
						}
					}
				})
			},
		},
		{
			Name: "hosts", Usage: "list hosts, or add one",
			Flags: append([]cli.Flag{coordFlag, outputFlag}, tlsFlags...),
			Action: func(ctx context.Context, cmd *cli.Command) error {
				return query(ctx, cmd, "/v1/hosts", &[]coord.Host{}, func(w io.Writer, v any) {
					for _, h := range *v.(*[]coord.Host) {
						fmt.Fprintf(w, "%s\t%s\n", h.Name, h.Addr)
					}
				})
			},
			Commands: []*cli.Command{{
				Name: "add", Usage: "register a hostd", ArgsUsage: "NAME ADDR",
				Flags: []cli.Flag{&cli.IntFlag{Name: "max-vms", Usage: "placement bound (0: none)"}},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					if cmd.Args().Len() != 2 {
						return fmt.Errorf("hosts add: want NAME ADDR")
					}
					c, err := coordClient(cmd)
					if err != nil {
						return err
					}
					return c.Do(ctx, "POST", "/v1/hosts", coord.Host{Name: cmd.Args().Get(0), Addr: cmd.Args().Get(1),
						MaxVMs: int(cmd.Int("max-vms"))}, nil)
				},
			}},
		},
		{
			Name: "jobs", Usage: "list jobs, or create one",
			Flags: append([]cli.Flag{coordFlag, outputFlag}, tlsFlags...),
			Action: func(ctx context.Context, cmd *cli.Command) error {
				return query(ctx, cmd, "/v1/jobs", &[]coord.Job{}, func(w io.Writer, v any) {
					for _, j := range *v.(*[]coord.Job) {
						var vms []string
						for _, vm := range j.VMs {
							vms = append(vms, vm.Name+"@"+vm.Host)
						}
						fmt.Fprintf(w, "%s\t%s\n", j.Name, strings.Join(vms, " "))
					}
				})
			},
			Commands: []*cli.Command{{
				Name: "create", Usage: "create a job from a file (VMs with a spec are created and started)",
				Flags: []cli.Flag{&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true}},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					data, err := os.ReadFile(cmd.String("file"))
					if err != nil {
						return err
					}
					var j coord.Job
					dec := yaml.NewDecoder(bytes.NewReader(data))
					dec.KnownFields(true)
					if err := dec.Decode(&j); err != nil {
						return fmt.Errorf("%s: %w", cmd.String("file"), err)
					}
					for i := range j.VMs {
						if s := j.VMs[i].Spec; s != nil {
							s.Name = j.VMs[i].Name
							if err := s.Validate(); err != nil {
								return fmt.Errorf("%s: vm %q: %w", cmd.String("file"), j.VMs[i].Name, err)
							}
						}
					}
					c, err := coordClient(cmd)
					if err != nil {
						return err
					}
					return c.Do(ctx, "POST", "/v1/jobs", j, nil)
				},
			}},
		},
		{
			Name: "checkpoints", Usage: "list, show or remove checkpoints",
			Flags: append([]cli.Flag{coordFlag, outputFlag}, tlsFlags...),
			Commands: []*cli.Command{
				{Name: "list", Action: func(ctx context.Context, cmd *cli.Command) error {
					return query(ctx, cmd, "/v1/checkpoints", &[]coord.Checkpoint{}, func(w io.Writer, v any) {
						tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
						fmt.Fprintln(tw, "ID\tJOB\tSTATUS\tCREATED\tVMS")
						for _, ck := range *v.(*[]coord.Checkpoint) {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", ck.ID, ck.Job, ck.Status, ck.CreatedAt.Format(time.RFC3339), len(ck.VMs))
						}
						tw.Flush()
					})
				}},
				{Name: "show", ArgsUsage: "ID", Action: func(ctx context.Context, cmd *cli.Command) error {
					id, err := oneArg(cmd, "ID")
					if err != nil {
						return err
					}
					return query(ctx, cmd, "/v1/checkpoints/"+id, &coord.Checkpoint{}, func(w io.Writer, v any) {
						ck := v.(*coord.Checkpoint)
						fmt.Fprintf(w, "%s: job %s, %s, created %s\n", ck.ID, ck.Job, ck.Status, ck.CreatedAt.Format(time.RFC3339))
						for _, vm := range ck.VMs {
							pause := ""
							if vm.Pause > 0 {
								pause = fmt.Sprintf(" (live, paused %s)", vm.Pause.Round(100*time.Microsecond))
							}
							fmt.Fprintf(w, "  %s on %s: %s %s%s\n", vm.Name, vm.Host, vm.Dir, vm.Digest, pause)
						}
					})
				}},
				{Name: "rm", ArgsUsage: "ID", Action: func(ctx context.Context, cmd *cli.Command) error {
					id, err := oneArg(cmd, "ID")
					if err != nil {
						return err
					}
					c, err := coordClient(cmd)
					if err != nil {
						return err
					}
					return c.Do(ctx, "DELETE", "/v1/checkpoints/"+id, nil, nil)
				}},
			},
		},
	}
}

// query GETs a path and prints it as text or JSON.
func query(ctx context.Context, cmd *cli.Command, path string, v any, text func(io.Writer, any)) error {
	out, err := cliutil.New(cmd.String("output"))
	if err != nil {
		return err
	}
	c, err := coordClient(cmd)
	if err != nil {
		return err
	}
	if err := c.Do(ctx, "GET", path, nil, v); err != nil {
		return err
	}
	return out.Print(v, func(w io.Writer) { text(w, v) })
}

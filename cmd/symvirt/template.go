package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/cliutil"
	"github.com/urfave/cli/v3"
)

func templateCommand() *cli.Command {
	return &cli.Command{
		Name:  "template",
		Usage: "booted VMs kept on a host to start clones from in milliseconds (talks to its hostd, or with --coord to the coordinator)",
		Flags: append([]cli.Flag{hostFlag(), outputFlag(), &cli.StringFlag{Name: "coord",
			Usage: "create, list and rm through the coordinator's API (unix socket path or host:port, mutual TLS): --host then names a host of the cluster, " +
				"and the coordinator records the template's id, which every host that fetches it for a boot checks it against"}}, tlsFlags()...),
		Commands: []*cli.Command{
			{
				Name: "create", Usage: "boot a VM until guestd is up and keep its memory and device state as a template",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "from", Required: true, Usage: "VM spec (YAML) to boot; its name is ignored"}},
				Action: func(ctx context.Context, cmd *cli.Command) error {
					name, err := oneArg(cmd, "NAME")
					if err != nil {
						return err
					}
					if cmd.String("coord") != "" && !cmd.IsSet("host") {
						return usageErr("template create --coord: give --host, the host of the cluster to make it on (symvirt hosts list)")
					}
					spec, err := hostd.LoadSpec(cmd.String("from"))
					if err != nil {
						return err
					}
					if cmd.String("coord") != "" {
						return coordTemplateAction(cmd, func(c *coord.Client) (any, error) {
							return c.CreateTemplate(ctx, coord.TemplateCreateRequest{Name: name, Host: cmd.String("host"), Spec: spec})
						})
					}
					return templateAction(cmd, func(c *hostd.Client) (any, error) { return c.CreateTemplate(ctx, name, spec) })
				},
			},
			{
				Name: "list", Usage: "list the host's templates (with --coord: the templates the coordinator recorded)",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					if cmd.String("coord") != "" {
						return coordTemplateAction(cmd, func(c *coord.Client) (any, error) { return c.Templates(ctx) })
					}
					return templateAction(cmd, func(c *hostd.Client) (any, error) { return c.Templates(ctx) })
				},
			},
			{
				Name: "rm", Usage: "remove a template (running clones keep their memory; with --coord: from every host, and forget it)", ArgsUsage: "NAME",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					name, err := oneArg(cmd, "NAME")
					if err != nil {
						return err
					}
					if cmd.String("coord") != "" {
						return coordTemplateAction(cmd, func(c *coord.Client) (any, error) { return deleted{name}, c.RemoveTemplate(ctx, name) })
					}
					return templateAction(cmd, func(c *hostd.Client) (any, error) { return deleted{name}, c.DeleteTemplate(ctx, name) })
				},
			},
			{
				Name: "pool", Usage: "keep SIZE standby clones of a template running, ready for requests (0: none)", ArgsUsage: "NAME SIZE",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					var size int
					if cmd.Args().Len() != 2 {
						return usageErr("template pool: want NAME and SIZE, got %d arguments (symvirt template pool --help)", cmd.Args().Len())
					}
					if _, err := fmt.Sscan(cmd.Args().Get(1), &size); err != nil {
						return usageErr("template pool: SIZE %q: not a number", cmd.Args().Get(1))
					}
					name := cmd.Args().Get(0)
					return templateAction(cmd, func(c *hostd.Client) (any, error) {
						return map[string]any{"template": name, "pool": size}, c.SetTemplatePool(ctx, name, size)
					})
				},
			},
			{
				Name: "clone", Usage: "start one VM from a template on this host", ArgsUsage: "TEMPLATE VM",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					if cmd.Args().Len() != 2 {
						return usageErr("template clone: want TEMPLATE and VM, got %d arguments (symvirt template clone --help)", cmd.Args().Len())
					}
					req := hostd.CloneRequest{Template: cmd.Args().Get(0), Name: cmd.Args().Get(1)}
					return templateAction(cmd, func(c *hostd.Client) (any, error) { return c.Clone(ctx, req) })
				},
			},
		},
	}
}

// templateAction runs fn against the host's hostd and prints its result.
func templateAction(cmd *cli.Command, fn func(*hostd.Client) (any, error)) error {
	out, err := output(cmd)
	if err != nil {
		return err
	}
	res, err := fn(hostdClient(cmd.String("host")))
	if err != nil {
		return err
	}
	return out.Print(res, func(w io.Writer) { printTemplateResult(w, res) })
}

// coordTemplateAction runs fn against the coordinator and prints its
// result.
func coordTemplateAction(cmd *cli.Command, fn func(*coord.Client) (any, error)) error {
	return coordAction(cmd, fn, printTemplateResult)
}

func printTemplateResult(w io.Writer, res any) {
	switch r := res.(type) {
	case coord.Template:
		fmt.Fprintf(w, "template %s: made on %s, id %s (recorded by the coordinator)\n", r.Name, r.Host, r.ID)
	case []coord.Template:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tHOST\tID\tCREATED")
		for _, t := range r {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Host, t.ID, t.Created.Format(time.RFC3339))
		}
		tw.Flush()
	case hostd.Template:
		fmt.Fprintf(w, "template %s: booted to guestd ready in %s; device state %s, RAM file %s\n",
			r.Name, r.Boot.Round(time.Millisecond), cliutil.Bytes(r.State.Size), r.RAM.Path)
	case []hostd.Template:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tMEMORY\tBOOT\tCREATED\tPOOL")
		for _, t := range r {
			pool := "-"
			if t.Pool != nil {
				pool = fmt.Sprintf("%d/%d", len(t.Pool.PIDs), t.Pool.Size)
			}
			fmt.Fprintf(tw, "%s\t%dM\t%s\t%s\t%s\n", t.Name, t.Spec.Memory, t.Boot.Round(time.Millisecond), t.CreatedAt.Format(time.RFC3339), pool)
		}
		tw.Flush()
	case hostd.CloneResult:
		fmt.Fprintf(w, "%s: ready in %s (pid %d, standby %v)\n", r.VM, r.Ready.Round(time.Millisecond), r.PID, r.Standby)
	case deleted:
		fmt.Fprintf(w, "%s: deleted\n", r.Deleted)
	}
}

func bootCommand() *cli.Command {
	cmd := &cli.Command{
		Name:  "boot",
		Usage: "start N clones of a template as a new job; the coordinator places them (hosts named in --hosts that lack the template fetch it through a fan-out tree)",
		Flags: coordFlags(
			&cli.StringFlag{Name: "template", Usage: "template name (symvirt template create; hosts in --hosts that lack it fetch it if it was made with --coord)"},
			&cli.IntFlag{Name: "count", Aliases: []string{"n"}, Required: true, Usage: "how many VMs"},
			&cli.StringFlag{Name: "hosts", Usage: "comma-separated hosts to use, with or without the template (default: every host that has it)"},
			&cli.StringFlag{Name: "job", Usage: "job name; its VMs are JOB-0 .. JOB-(N-1) (default: the template's name)"},
			&cli.IntFlag{Name: "parallel", Value: 2, Usage: "clones each host starts at once"},
		),
		Action: runBoot,
	}
	cmd.Flags = append(cmd.Flags, imageBootFlags()...)
	return cmd
}

func runBoot(ctx context.Context, cmd *cli.Command) error {
	req := coord.BootRequest{Template: cmd.String("template"), Count: int(cmd.Int("count")),
		Job: cmd.String("job"), Parallel: int(cmd.Int("parallel"))}
	if err := imageBoot(cmd, &req); err != nil {
		return err
	}
	if req.Job == "" {
		req.Job = req.Template
	}
	for _, h := range strings.Split(cmd.String("hosts"), ",") {
		if h = strings.TrimSpace(h); h != "" {
			req.Hosts = append(req.Hosts, h)
		}
	}
	return bootWithProgress(ctx, cmd, req)
}

// bootWithProgress runs a boot (symvirt boot, or jobs create of a job
// with count:), showing VMs ready / N as they come, then each VM's time.
func bootWithProgress(ctx context.Context, cmd *cli.Command, req coord.BootRequest) error {
	out, err := output(cmd)
	if err != nil {
		return err
	}
	c, err := coordClient(cmd)
	if err != nil {
		return err
	}
	p := cliutil.NewProgress("boot "+req.Job, true)
	res, err := c.Boot(ctx, req, func(b coord.BootProgress) {
		p.Update(fmt.Sprintf("ready %d/%d failed %d", b.Ready, b.Count, b.Failed), 0, 0, 0)
	})
	p.Done()
	if perr := out.Print(res, func(w io.Writer) { printBoot(w, res) }); err == nil {
		err = perr
	}
	return err
}

func printBoot(w io.Writer, res coord.BootResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tHOST\tREADY\tSINCE START\tERROR")
	for _, vm := range res.VMs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", vm.Name, vm.Host, vm.Ready.Round(time.Millisecond), vm.Since.Round(time.Millisecond), vm.Error)
	}
	tw.Flush()
	fmt.Fprintf(w, "job %s: %d/%d VMs of template %s ready in %s\n", res.Job, res.Ready, res.Count, res.Template, res.Took.Round(time.Millisecond))
}

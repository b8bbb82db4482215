package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/urfave/cli/v3"
	"go.yaml.in/yaml/v3"
)

// clusterCommands are the commands that talk to the coordinator.
func clusterCommands() []*cli.Command {
	return append(operationCommands(), consolidateCommand(), statusCommand(), hostsCommand(), jobsCommand(), checkpointsCommand())
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name: "status", Usage: "hosts and jobs as the hostds report them",
		Flags: coordFlags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			return query(ctx, cmd, "/v1/status", &coord.Status{}, func(w io.Writer, v any) {
				st := v.(*coord.Status)
				if len(st.Hosts) == 0 {
					fmt.Fprintln(w, "no hosts (symvirt hosts add NAME ADDR)")
				}
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
	}
}

func hostsCommand() *cli.Command {
	return &cli.Command{
		Name: "hosts", Usage: "list, add, remove, cordon or uncordon the hosts the coordinator drives",
		Flags: coordFlags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			return query(ctx, cmd, "/v1/hosts", &[]coord.HostInfo{}, func(w io.Writer, v any) {
				for _, h := range *v.(*[]coord.HostInfo) {
					fmt.Fprintf(w, "%s\t%s%s%s\n", h.Name, h.Addr, cordonedColumn(h.Cordoned), usageColumn(h.Usage))
				}
			})
		},
		Commands: append([]*cli.Command{{
			Name: "add", Usage: "register a hostd (or change its address)", ArgsUsage: "NAME ADDR",
			Description: "NAME is the host's name in jobs and commands (its hostd certificate's --name under TLS);\n" +
				"ADDR its hostd API address: host:port (--listen) or a unix socket path.",
			Flags: []cli.Flag{&cli.IntFlag{Name: "max-vms", Usage: "placement bound for restart and evacuate (0: none)"}},
			Action: func(ctx context.Context, cmd *cli.Command) error {
				if cmd.Args().Len() != 2 {
					return usageErr("hosts add: want NAME ADDR, got %d arguments", cmd.Args().Len())
				}
				h := coord.Host{Name: cmd.Args().Get(0), Addr: cmd.Args().Get(1), MaxVMs: int(cmd.Int("max-vms"))}
				return change(ctx, cmd, "POST", "/v1/hosts", h, &h, func(w io.Writer) {
					fmt.Fprintf(w, "host %s added (%s)\n", h.Name, h.Addr)
				})
			},
		}, {
			Name: "rm", Usage: "forget a host (refused while it runs a VM of a job)", ArgsUsage: "NAME",
			Action: func(ctx context.Context, cmd *cli.Command) error {
				name, err := oneArg(cmd, "NAME")
				if err != nil {
					return err
				}
				return change(ctx, cmd, "DELETE", "/v1/hosts/"+url.PathEscape(name), nil, &map[string]string{}, func(w io.Writer) {
					fmt.Fprintf(w, "host %s removed\n", name)
				})
			},
		}}, cordonCommands()...),
	}
}

func jobsCommand() *cli.Command {
	return &cli.Command{
		Name: "jobs", Usage: "list, show, create or remove jobs (named sets of VMs operated on together)",
		Flags: coordFlags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			return query(ctx, cmd, "/v1/jobs", &[]coord.JobInfo{}, func(w io.Writer, v any) {
				for _, j := range *v.(*[]coord.JobInfo) {
					fmt.Fprintf(w, "%s\t%s\t%s%s%s\n", j.Name, jobVMs(j.Job), checkpointAge(j.LastCheckpoint), jobUsageColumn(j),
						fenceColumn(j.Job))
				}
			})
		},
		Commands: []*cli.Command{{
			Name: "create", Usage: "create a job from a file (VMs with a spec are created and started)",
			Description: "The file (YAML) names the job and its VMs, each on a host (a name from `symvirt hosts`):\n\n" +
				"   name: mpi-job\n   vms:\n     - name: vm1\n       host: node1\n       spec:            # optional: a VM spec; without it the VM must exist on the host\n" +
				"         memory: 1G\n         kernel: /srv/images/vmlinuz\n         initrd: /srv/images/initrd.img\n     - {name: vm2, host: node2}\n\n" +
				"Or, instead of vms, N clones of a template (as `symvirt boot`: placed by the coordinator, VMs NAME-0 .. NAME-(N-1),\n" +
				"progress and each VM's time to guestd-ready shown):\n\n" +
				"   name: web\n   template: small\n   count: 100\n   hosts: [node1, node2]   # optional: default every host that has the template\n   parallel: 2             # optional: clones each host starts at once\n\n" +
				"Either form may add network_fence: job (default all): a live checkpoint then holds, on each VM, only the frames\n" +
				"from the job's other VMs (by MAC) until its own point, so peers outside the job see only the VM's pause. Only for\n" +
				"VMs on one Ethernet segment whose NICs each have a MAC of their own (not for VMs that reach each other through a router).",
			Flags: []cli.Flag{&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "job file (YAML)"}},
			Action: func(ctx context.Context, cmd *cli.Command) error {
				j, err := loadJob(cmd.String("file"))
				if err != nil {
					return err
				}
				if j.Clones() {
					req, _ := j.BootRequest() // loadJob checked it
					return bootWithProgress(ctx, cmd, req)
				}
				return change(ctx, cmd, "POST", "/v1/jobs", j, &j, func(w io.Writer) {
					fmt.Fprintf(w, "job %s created: %s\n", j.Name, jobVMs(j))
				})
			},
		}, {
			Name: "show", Usage: "show a job: its VMs and their hosts", ArgsUsage: "JOB",
			Action: func(ctx context.Context, cmd *cli.Command) error {
				name, err := oneArg(cmd, "JOB")
				if err != nil {
					return err
				}
				return query(ctx, cmd, "/v1/jobs/"+url.PathEscape(name), &coord.Job{}, func(w io.Writer, v any) {
					j := v.(*coord.Job)
					fmt.Fprintf(w, "job %s, created %s\n", j.Name, j.Created.Format(time.RFC3339))
					if j.NetworkFence != "" {
						fmt.Fprintf(w, "  network fence: %s\n", j.NetworkFence)
					}
					for _, vm := range j.VMs {
						fmt.Fprintf(w, "  %s on %s\n", vm.Name, vm.Host)
					}
				})
			},
		}, {
			Name: "rm", Usage: "forget a job (its VMs keep running; its checkpoints stay)", ArgsUsage: "JOB",
			Action: func(ctx context.Context, cmd *cli.Command) error {
				name, err := oneArg(cmd, "JOB")
				if err != nil {
					return err
				}
				var j coord.Job
				return change(ctx, cmd, "DELETE", "/v1/jobs/"+url.PathEscape(name), nil, &j, func(w io.Writer) {
					fmt.Fprintf(w, "job %s removed; its VMs keep running: %s\n", j.Name, jobVMs(j))
				})
			},
		}},
	}
}

// fenceColumn shows a job's network fence scope when one is set.
func fenceColumn(j coord.Job) string {
	if j.NetworkFence == "" {
		return ""
	}
	return "\tnetwork fence " + j.NetworkFence
}

func jobVMs(j coord.Job) string {
	var vms []string
	for _, vm := range j.VMs {
		vms = append(vms, vm.Name+"@"+vm.Host)
	}
	return strings.Join(vms, " ")
}

// loadJob reads a job file strictly and checks each VM's spec.
func loadJob(file string) (coord.Job, error) {
	var j coord.Job
	data, err := os.ReadFile(file)
	if err != nil {
		return j, usageErr("%v", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&j); err != nil {
		return j, fmt.Errorf("%s: %w: %v", file, coord.ErrInvalid, err)
	}
	if j.Clones() {
		if _, err := j.BootRequest(); err != nil {
			return j, fmt.Errorf("%s: %w", file, err)
		}
		return j, nil
	}
	for i := range j.VMs {
		if s := j.VMs[i].Spec; s != nil {
			s.Name = j.VMs[i].Name
			if err := s.Validate(); err != nil {
				return j, fmt.Errorf("%s: vm %q: %w", file, j.VMs[i].Name, err)
			}
		}
	}
	return j, nil
}

func checkpointsCommand() *cli.Command {
	list := func(ctx context.Context, cmd *cli.Command) error {
		return query(ctx, cmd, "/v1/checkpoints", &[]coord.Checkpoint{}, func(w io.Writer, v any) {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tJOB\tSTATUS\tCREATED\tVMS")
			for _, ck := range *v.(*[]coord.Checkpoint) {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", ck.ID, ck.Job, ck.Status, ck.CreatedAt.Format(time.RFC3339), len(ck.VMs))
			}
			tw.Flush()
		})
	}
	return &cli.Command{
		Name: "checkpoints", Usage: "list, show or remove checkpoints",
		Flags:  coordFlags(),
		Action: list,
		Commands: []*cli.Command{
			{Name: "list", Usage: "list checkpoints, newest first", Action: list},
			{Name: "show", Usage: "show a checkpoint: status, and each VM's directory, digest and snapshot pause", ArgsUsage: "ID",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					id, err := oneArg(cmd, "ID")
					if err != nil {
						return err
					}
					return query(ctx, cmd, "/v1/checkpoints/"+url.PathEscape(id), &coord.Checkpoint{}, func(w io.Writer, v any) {
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
			{Name: "rm", Usage: "delete a checkpoint's files (through the hostds that wrote them) and its record", ArgsUsage: "ID",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					id, err := oneArg(cmd, "ID")
					if err != nil {
						return err
					}
					return change(ctx, cmd, "DELETE", "/v1/checkpoints/"+url.PathEscape(id), nil, &map[string]string{}, func(w io.Writer) {
						fmt.Fprintf(w, "checkpoint %s removed\n", id)
					})
				}},
		},
	}
}

// query GETs a path and prints it as text or JSON.
func query(ctx context.Context, cmd *cli.Command, path string, v any, text func(io.Writer, any)) error {
	return change(ctx, cmd, "GET", path, nil, v, func(w io.Writer) { text(w, v) })
}

// change sends a request and prints its reply as JSON, or text's line.
func change(ctx context.Context, cmd *cli.Command, method, path string, body, reply any, text func(io.Writer)) error {
	out, err := output(cmd)
	if err != nil {
		return err
	}
	c, err := coordClient(cmd)
	if err != nil {
		return err
	}
	if err := c.Do(ctx, method, path, body, reply); err != nil {
		return err
	}
	return out.Print(reply, text)
}

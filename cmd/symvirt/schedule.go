package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/urfave/cli/v3"
)

func scheduleCommand() *cli.Command {
	list := func(ctx context.Context, cmd *cli.Command) error {
		return query(ctx, cmd, "/v1/schedules", &[]coord.Schedule{}, func(w io.Writer, v any) {
			printSchedules(w, *v.(*[]coord.Schedule))
		})
	}
	return &cli.Command{
		Name: "schedule", Usage: "checkpoint a job periodically, keeping its newest complete checkpoints", ArgsUsage: "JOB",
		Description: "The coordinator checkpoints JOB every --every (as `symvirt checkpoint` does; a tick that finds the job busy\n" +
			"with another operation is skipped and logged), and once a checkpoint is complete deletes the job's oldest complete\n" +
			"checkpoints beyond --keep (all of the job's, also those taken by hand; failed ones are neither counted nor\n" +
			"deleted). The schedule is kept in the coordinator's store. Setting it again replaces it.",
		Flags: coordFlags(
			&cli.DurationFlag{Name: "every", Usage: "period, e.g. 1h or 30m (at least 1s)"},
			&cli.IntFlag{Name: "keep", Value: 3, Usage: "complete checkpoints of the job to keep (at least 1)"},
			liveFlag("copy each VM while it runs"), bandwidthFlag()),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			job, err := oneArg(cmd, "JOB")
			if err != nil {
				return err
			}
			if !cmd.IsSet("every") {
				return usageErr("schedule: --every is missing (e.g. --every 1h)")
			}
			bw, err := parseRate(cmd.String("bandwidth"))
			if err != nil {
				return err
			}
			s := coord.Schedule{Job: job, Every: cmd.Duration("every"), Keep: int(cmd.Int("keep")),
				Options: coord.CheckpointOptions{Live: cmd.Bool("live"), Bandwidth: bw}}
			return change(ctx, cmd, "PUT", "/v1/schedules/"+url.PathEscape(job), s, &s, func(w io.Writer) {
				fmt.Fprintf(w, "job %s: a checkpoint every %s, keeping the %d newest complete ones; next at %s\n",
					s.Job, s.Every, s.Keep, s.Next().Local().Format(time.RFC3339))
			})
		},
		Commands: []*cli.Command{
			{Name: "list", Usage: "list the schedules: period, retention, next tick, last outcome", Action: list},
			{Name: "rm", Usage: "stop a job's schedule (its checkpoints stay)", ArgsUsage: "JOB",
				Action: func(ctx context.Context, cmd *cli.Command) error {
					job, err := oneArg(cmd, "JOB")
					if err != nil {
						return err
					}
					var s coord.Schedule
					return change(ctx, cmd, "DELETE", "/v1/schedules/"+url.PathEscape(job), nil, &s, func(w io.Writer) {
						fmt.Fprintf(w, "schedule of job %s removed; its checkpoints stay\n", job)
					})
				}},
		},
	}
}

func printSchedules(w io.Writer, scheds []coord.Schedule) {
	if len(scheds) == 0 {
		fmt.Fprintln(w, "no schedules (symvirt schedule JOB --every 1h --keep 3)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tEVERY\tKEEP\tNEXT\tRUNS\tFAILED\tSKIPPED\tPRUNED\tLAST")
	for _, s := range scheds {
		last := s.LastOutcome
		if last == "" {
			last = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\n", s.Job, s.Every, s.Keep,
			s.Next().Local().Format(time.RFC3339), s.Runs, s.Failed, s.Skipped, s.Pruned, last)
	}
	tw.Flush()
}

// checkpointAge is the jobs column: how old the job's newest complete
// checkpoint is (on the coordinator's clock).
func checkpointAge(ck *coord.LastCheckpoint) string {
	if ck == nil {
		return "no complete checkpoint"
	}
	return fmt.Sprintf("last checkpoint %s ago (%s)", (time.Duration(ck.AgeSeconds) * time.Second).String(), ck.ID)
}

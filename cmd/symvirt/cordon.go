package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/urfave/cli/v3"
)

// cordonCommands are `hosts cordon` and `hosts uncordon`.
func cordonCommands() []*cli.Command {
	return []*cli.Command{{
		Name: "cordon", Usage: "place no new VM on a host (restart, migrate, evacuate, jobs create); its VMs run on",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "reason", Usage: "why, shown by symvirt hosts"}},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			name, err := oneArg(cmd, "NAME")
			if err != nil {
				return err
			}
			var cd coord.Cordon
			return change(ctx, cmd, "POST", "/v1/hosts/"+url.PathEscape(name)+"/cordon",
				map[string]string{"reason": cmd.String("reason")}, &cd, func(w io.Writer) {
					fmt.Fprintf(w, "host %s cordoned: no new VM is placed there (symvirt hosts uncordon %s)\n", name, name)
				})
		},
	}, {
		Name: "uncordon", Usage: "let a cordoned host take new VMs again", ArgsUsage: "NAME",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			name, err := oneArg(cmd, "NAME")
			if err != nil {
				return err
			}
			return change(ctx, cmd, "POST", "/v1/hosts/"+url.PathEscape(name)+"/uncordon", nil, &map[string]string{},
				func(w io.Writer) { fmt.Fprintf(w, "host %s uncordoned\n", name) })
		},
	}}
}

// cordonedColumn is the hosts column of a cordoned host ("" otherwise).
func cordonedColumn(cd *coord.Cordon) string {
	if cd == nil {
		return ""
	}
	s := "\tcordoned since " + cd.Since.Local().Format(time.RFC3339)
	if cd.Reason != "" {
		s += ": " + cd.Reason
	}
	return s
}

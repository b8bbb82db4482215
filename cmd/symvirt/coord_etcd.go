package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/symvirt/symvirt/coord"
	"github.com/urfave/cli/v3"
)

// etcdFlags make the coordinator one replica of several sharing an etcd
// cluster (high availability).
func etcdFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "etcd", Sources: cli.EnvVars("SYMVIRT_ETCD"),
			Usage: "etcd endpoints (https://a:2379,https://b:2379,...): keep the store in etcd and run as one of several coordinator replicas (default: bbolt in --state-dir, one coordinator)"},
		&cli.StringFlag{Name: "etcd-ca", Sources: cli.EnvVars("SYMVIRT_ETCD_CA"), Usage: "CA of the etcd cluster's certificates"},
		&cli.StringFlag{Name: "etcd-cert", Sources: cli.EnvVars("SYMVIRT_ETCD_CERT"), Usage: "client certificate towards etcd"},
		&cli.StringFlag{Name: "etcd-key", Sources: cli.EnvVars("SYMVIRT_ETCD_KEY"), Usage: "its private key"},
		&cli.StringFlag{Name: "etcd-prefix", Value: "/symvirt/coord", Usage: "key prefix of this coordinator set in etcd"},
		&cli.DurationFlag{Name: "etcd-ttl", Value: 0, Usage: "session TTL (whole seconds, default 3s): a leader silent this long is replaced"},
		&cli.BoolFlag{Name: "etcd-insecure-http", Usage: "allow http:// etcd endpoints (tests only: the journal then travels in clear, unauthenticated)"},
		&cli.StringFlag{Name: "advertise", Usage: "API address the CLI is told to use when this replica leads (default: --listen, else the socket)"},
	}
}

// etcdConfig is the replica's etcd configuration (nil without --etcd).
func etcdConfig(cmd *cli.Command) (*coord.EtcdConfig, error) {
	list := cmd.String("etcd")
	if list == "" {
		return nil, nil
	}
	cfg := &coord.EtcdConfig{CA: cmd.String("etcd-ca"), Cert: cmd.String("etcd-cert"), Key: cmd.String("etcd-key"),
		Prefix: cmd.String("etcd-prefix"), TTL: cmd.Duration("etcd-ttl"), Advertise: cmd.String("advertise")}
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if strings.HasPrefix(e, "http://") && !cmd.Bool("etcd-insecure-http") {
			return nil, usageErr("--etcd %s: plain http; give https endpoints with --etcd-ca (and --etcd-cert/--etcd-key), "+
				"or --etcd-insecure-http for a test set-up", e)
		}
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
			return nil, usageErr("--etcd %q: want https://HOST:PORT", e)
		}
		cfg.Endpoints = append(cfg.Endpoints, e)
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cmd.String("listen")
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cmd.String("socket")
	}
	if cfg.Advertise == "" {
		cfg.Advertise = coord.SocketPath(cmd.String("state-dir"))
	}
	return cfg, nil
}

// coordStatusCommand shows the coordinator replicas, which one leads and
// its epoch; every replica answers it, also while none leads.
func coordStatusCommand() *cli.Command {
	return &cli.Command{
		Name: "status", Usage: "the coordinator replicas, the leader and its epoch (etcd); any replica answers",
		Flags: coordFlags(),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			return query(ctx, cmd, "/v1/replicas", &coord.HAStatus{}, func(w io.Writer, v any) {
				st := v.(*coord.HAStatus)
				if len(st.Replicas) == 0 && st.Self == "" {
					fmt.Fprintln(w, "one coordinator (bbolt store): no replicas")
					return
				}
				if st.Leader == "" {
					fmt.Fprintln(w, "leader: none elected")
				} else {
					fmt.Fprintf(w, "leader: %s (epoch %d)\n", st.Leader, st.Epoch)
				}
				fmt.Fprintf(w, "replicas (%d):\n", len(st.Replicas))
				for _, r := range st.Replicas {
					role := "follower"
					if r.Leader {
						role = "leader"
					}
					fmt.Fprintf(w, "  %s  %s  %s\n", r.ID, r.Addr, role)
				}
			})
		},
	}
}

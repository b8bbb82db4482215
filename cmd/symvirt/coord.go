package main

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/unixsock"
	"github.com/urfave/cli/v3"
)

// tlsFlags are a party's certificate flags (new flags each time: a flag
// holds its parsed value).
func tlsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tls-cert", Sources: cli.EnvVars("SYMVIRT_TLS_CERT"), Usage: "this party's certificate (symvirt certs issue)"},
		&cli.StringFlag{Name: "tls-key", Sources: cli.EnvVars("SYMVIRT_TLS_KEY"), Usage: "its private key"},
		&cli.StringFlag{Name: "tls-ca", Sources: cli.EnvVars("SYMVIRT_TLS_CA"), Usage: "the cluster CA"},
	}
}

func coordDaemonCommand() *cli.Command {
	return &cli.Command{
		Name:  "coord",
		Usage: "run the coordinator: job checkpoint, restart, migrate and evacuate across hosts",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: "/var/lib/symvirt-coord", Usage: "the coordinator's store (bbolt)"},
			&cli.StringFlag{Name: "checkpoint-dir", Usage: "checkpoint root, the same path on every host (shared storage)"},
			&cli.StringFlag{Name: "socket", Usage: "API unix socket (default STATE_DIR/coord.sock)"},
			&cli.StringFlag{Name: "listen", Usage: "API TCP address (mutual TLS with client certificates)"},
			metricsAddressFlag,
			&cli.DurationFlag{Name: "lease", Value: 30 * time.Second, Usage: "how long a hostd keeps a VM paused without the coordinator"},
			&cli.DurationFlag{Name: "prepare-timeout", Value: 60 * time.Second,
				Usage: "how long the guests of an operation have to reach their safe point (the barrier); " +
					"each hostd also bounds its guest's round by its own --guest-timeout (default 30s), so the effective bound is the smaller of the two"},
			&cli.DurationFlag{Name: "step-timeout", Value: 60 * time.Second, Usage: "deadline of each step sent to a hostd (detach, stop, attach, resume...)"},
			&cli.DurationFlag{Name: "transfer-timeout", Value: 10 * time.Minute, Usage: "deadline of a step that moves a VM's state (save, migrate, restore)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		}, append(tlsFlags(), etcdFlags()...)...),
		Action:   runCoord,
		Commands: []*cli.Command{coordStatusCommand()},
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
		Logger: log, CrashAt: os.Getenv("SYMVIRT_COORD_CRASH_AT"), StopAt: os.Getenv("SYMVIRT_COORD_STOP_AT")}
	log.Info("timeouts", "prepare", cfg.PrepareTimeout, "step", cfg.StepTimeout, "transfer", cfg.TransferTimeout,
		"note", "a hostd's guest_timeout caps the prepare timeout of its guests")
	if cfg.CheckpointDir == "" {
		return usageErr("Required flag \"checkpoint-dir\" not set") // not a flag requirement: \"coord status\" goes without
	}
	if !filepath.IsAbs(cfg.CheckpointDir) {
		return usageErr("--checkpoint-dir %q: want an absolute path", cfg.CheckpointDir)
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
	if cfg.Etcd, err = etcdConfig(cmd); err != nil {
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
		return usageErr("--listen needs --tls-cert, --tls-key and --tls-ca: the coordinator's TCP API is mutual TLS only")
	}
	if err := serveCoordMetrics(ctx, log, cmd, c); err != nil {
		return err
	}
	return serve(log, "coord", c.Handler(), sock, listen, serverTLS, "state_dir", cfg.StateDir)
}

func coordFlag() cli.Flag {
	return &cli.StringFlag{Name: "coord", Sources: cli.EnvVars("SYMVIRT_COORD"),
		Value: "/var/lib/symvirt-coord/coord.sock", Usage: "coordinator API: unix socket path or host:port (mutual TLS)"}
}

// coordFlags are the flags of every command that talks to the coordinator.
func coordFlags(more ...cli.Flag) []cli.Flag {
	return append(append([]cli.Flag{coordFlag(), outputFlag()}, tlsFlags()...), more...)
}

func coordClient(cmd *cli.Command) (*coord.Client, error) {
	addr := cmd.String("coord")
	target = coordTarget(addr)
	var cfg *tls.Config
	if cert := cmd.String("tls-cert"); cert != "" {
		var err error
		if cfg, err = pki.ClientConfig(cert, cmd.String("tls-key"), cmd.String("tls-ca"), pki.RoleCoord); err != nil {
			return nil, err
		}
	} else if !strings.HasPrefix(addr, "unix:") && !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, ".") {
		return nil, usageErr("--coord %s is a TCP address: the coordinator's TCP API is mutual TLS only; give --tls-cert, "+
			"--tls-key and --tls-ca (a client certificate: symvirt certs issue --role client), or its unix socket path", addr)
	}
	return coord.NewClient(cmd.String("coord"), cfg), nil
}

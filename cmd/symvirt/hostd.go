package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/unixsock"
	"github.com/urfave/cli/v3"
)

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func hostdCommand() *cli.Command {
	return &cli.Command{
		Name:  "hostd",
		Usage: "run the host daemon: launches and supervises QEMU, checkpoints, migrates",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "host configuration (YAML)"},
			&cli.StringFlag{Name: "state-dir", Value: "/var/lib/symvirt", Usage: "per-VM state (survives hostd restarts)"},
			&cli.StringFlag{Name: "socket", Usage: "API unix socket (default STATE_DIR/hostd.sock)"},
			&cli.StringFlag{Name: "listen", Usage: "API TCP address for remote hosts, e.g. 10.0.0.1:7070 (needs --tls-cert unless loopback or --insecure)"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow --listen on a non-loopback address without TLS: anyone who reaches it is root here (tests only)"},
			&cli.StringFlag{Name: "accel", Usage: "kvm, tcg or auto (default tcg)"},
			&cli.StringFlag{Name: "qemu", Usage: "QEMU binary"},
			&cli.StringFlag{Name: "migration-address", Usage: "address incoming migrations listen on (default: the host of --listen, required when --listen is a wildcard; without --listen 127.0.0.1); sources accept only that host"},
			&cli.StringFlag{Name: "migration-ports", Usage: "port range incoming migrations listen in (default 49152-49407)"},
			&cli.BoolFlag{Name: "no-migration-tls", Usage: "send migration streams in the clear even with --tls-cert (a bench)"},
			&cli.DurationFlag{Name: "guest-timeout", Usage: "deadline of a guest cooperation round (default 30s; it also caps the coordinator's --prepare-timeout for this host's guests)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "tls-cert", Usage: "this hostd's certificate (symvirt certs issue --role hostd); with it the TCP API is mutual TLS"},
			&cli.StringFlag{Name: "tls-key", Usage: "its private key"},
			&cli.StringFlag{Name: "tls-ca", Usage: "the cluster CA"},
		},
		Action: runHostd,
	}
}

func runHostd(ctx context.Context, cmd *cli.Command) error {
	log, err := newLogger(cmd.String("log-level"))
	if err != nil {
		return err
	}
	var cfg hostd.Config
	if p := cmd.String("config"); p != "" {
		if cfg, err = hostd.LoadConfig(p); err != nil {
			return err
		}
	}
	if cmd.IsSet("state-dir") || cfg.StateDir == "" {
		cfg.StateDir = cmd.String("state-dir")
	}
	for flag, dst := range map[string]*string{"accel": &cfg.Accel, "qemu": &cfg.QEMU, "migration-address": &cfg.MigrationAddress,
		"migration-ports": &cfg.MigrationPorts, "tls-cert": &cfg.TLSCert, "tls-key": &cfg.TLSKey, "tls-ca": &cfg.TLSCA} {
		if v := cmd.String(flag); v != "" {
			*dst = v
		}
	}
	if cmd.Bool("no-migration-tls") {
		off := false
		cfg.MigrationTLS = &off
	}
	insecure, err := checkListen(log, cmd.String("listen"), cfg.TLSCert != "", cmd.Bool("insecure"))
	if err != nil {
		return err
	}
	if cfg.MigrationAddress == "" {
		if cfg.MigrationAddress, err = migrationDefault(cmd.String("listen")); err != nil {
			return err
		}
	}
	if d := cmd.Duration("guest-timeout"); d > 0 {
		cfg.GuestTimeout = d
	}
	cfg.Logger = log
	if err := unixsock.PrivateDir(cfg.StateDir); err != nil {
		return err
	}
	h, err := hostd.New(cfg)
	if err != nil {
		return err
	}
	defer h.Close()
	h.InsecureAPI = insecure
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	h.Restart = func(binary string) (func() error, error) { return reexec(cmp.Or(binary, exe), log) }
	sock := cmd.String("socket")
	if sock == "" {
		sock = hostd.Layout{StateDir: cfg.StateDir}.Socket()
	}
	var serverTLS *tls.Config
	if cert := cfg.TLSCert; cert != "" {
		key, ca := cfg.TLSKey, cfg.TLSCA
		// Roles are checked at the handshake; what each may call, in
		// hostd's handler (hostd/peerauth.go).
		if serverTLS, err = pki.ServerConfig(cert, key, ca, pki.RoleCoord, pki.RoleHostd); err != nil {
			return err
		}
		if h.PeerTLS, err = pki.ClientConfig(cert, key, ca, pki.RoleHostd); err != nil {
			return err
		}
		if h.PeerAuth, err = hostd.NewPeerAuth(cert, key, ca); err != nil {
			return err
		}
	}
	return serve(log, "hostd", h.Handler(), sock, cmd.String("listen"), serverTLS,
		"state_dir", cfg.StateDir, "accel", h.Config().Accel)
}

// checkListen refuses a TCP API without TLS on a non-loopback address
// unless insecure is given: every route (create a VM, restart hostd with any
// binary) is root on this host. It reports whether the API is insecure.
func checkListen(log *slog.Logger, addr string, hasTLS, insecure bool) (bool, error) {
	if addr == "" || hasTLS {
		return false, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("--listen %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	loopback := host == "localhost" || ip != nil && ip.IsLoopback()
	if !loopback && !insecure {
		return false, fmt.Errorf("--listen %s without --tls-cert: anyone who reaches this address could run "+
			"anything as root on this host; give --tls-cert, --tls-key and --tls-ca, listen on a loopback address, "+
			"or pass --insecure (tests only)", addr)
	}
	log.Warn("INSECURE: the TCP API has no TLS and no authentication: whoever reaches it is root on this host",
		"listen", addr, "loopback", loopback)
	return true, nil
}

// migrationDefault is where incoming migrations listen when neither
// --migration-address nor migration_address says: the host of --listen,
// the address other hosts already reach this hostd on. Without --listen
// (this host only) it is loopback (the config's default); a wildcard
// --listen names no address, so it is refused rather than silently
// loopback, which no other host could reach.
func migrationDefault(listen string) (string, error) {
	if listen == "" {
		return "", nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("--listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return "", usageErr("--listen %s names no address other hosts can send migrations to: "+
			"set --migration-address (or migration_address in --config) to this host's address on the cluster network", listen)
	}
	return host, nil
}

// reexec checks that bin can replace this hostd and returns what does it.
// Every descriptor is close-on-exec: the new process listens again and
// re-adopts the VMs from the state dir.
func reexec(bin string, log *slog.Logger) (func() error, error) {
	st, err := os.Stat(bin)
	if err != nil {
		return nil, fmt.Errorf("hostd binary: %w", err)
	}
	if st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("hostd binary %s is not executable", bin)
	}
	return func() error {
		log.Info("re-executing hostd; VMs keep running", "binary", bin)
		return syscall.Exec(bin, append([]string{bin}, os.Args[1:]...), os.Environ())
	}, nil
}

package main

import (
	"context"
	"log/slog"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/metricsrv"
	"github.com/urfave/cli/v3"
)

// The coordinator's metrics address (hostd's is metrics_address in its
// config); the access rule is internal/metricsrv's.
var metricsAddressFlag = &cli.StringFlag{Name: "metrics-address",
	Usage: "serve /metrics alone on this host:port: plain HTTP on a loopback address only; with --tls-cert, " +
		"TLS for monitor certificates only (symvirt certs issue --role monitor)"}

func serveCoordMetrics(ctx context.Context, log *slog.Logger, cmd *cli.Command, c *coord.Coord) error {
	_, err := metricsrv.Serve(ctx, log, metricsrv.Config{Address: cmd.String("metrics-address"),
		TLSCert: cmd.String("tls-cert"), TLSKey: cmd.String("tls-key"), TLSCA: cmd.String("tls-ca")}, c.MetricsHandler())
	return err
}

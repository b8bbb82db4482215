// Package metricsrv serves a daemon's Prometheus metrics on an address of
// their own, apart from its API, under their own access rule: plain HTTP
// on a loopback address only (a scraper on the same machine), or TLS 1.3
// with a client certificate of role monitor (pki.RoleMonitor), which may
// read /metrics and nothing else: every API refuses that role.
//
// With the daemon's own certificate given, the metrics address is always
// TLS, loopback or not: the certificate says the site runs mutual TLS.
package metricsrv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

// ErrPlainNotLoopback: a metrics address that is not loopback was given
// without the daemon's certificate, so it would be plain HTTP to anyone who
// reaches it.
var ErrPlainNotLoopback = errors.New("plain HTTP metrics only on a loopback address")

// Config is where a daemon serves its metrics, and with which certificate.
type Config struct {
	// Address is host:port; "" serves no metrics address.
	Address string
	// TLSCert, TLSKey and TLSCA are the daemon's own certificate, key and
	// the cluster CA; with them the address is TLS and takes monitor
	// certificates only.
	TLSCert, TLSKey, TLSCA string
}

// Check validates c without listening, so that a daemon refuses a bad
// metrics address before it does anything else.
func (c Config) Check() error {
	if c.Address == "" || c.TLSCert != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Address)
	if err != nil {
		return fmt.Errorf("metrics address %q: %w", c.Address, err)
	}
	if !loopback(host) {
		return fmt.Errorf("metrics address %s: without the daemon's certificate (tls_cert, --tls-cert) anyone who "+
			"reaches it reads the metrics; listen on 127.0.0.1 or ::1, or give the certificate (scrapers then "+
			"need a monitor one: symvirt certs issue --role monitor): %w", c.Address, ErrPlainNotLoopback)
	}
	return nil
}

func loopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// Serve listens on c.Address and serves GET /metrics from metrics (and
// nothing else) until ctx is done. It returns the address it listens on;
// with no address it does nothing and returns nil.
func Serve(ctx context.Context, log *slog.Logger, c Config, metrics http.Handler) (net.Addr, error) {
	if c.Address == "" {
		return nil, nil
	}
	if err := c.Check(); err != nil {
		return nil, err
	}
	var serverTLS *tls.Config
	if c.TLSCert != "" {
		var err error
		if serverTLS, err = pki.ServerConfig(c.TLSCert, c.TLSKey, c.TLSCA, pki.RoleMonitor); err != nil {
			return nil, fmt.Errorf("metrics address %s: %w", c.Address, err)
		}
	}
	l, err := net.Listen("tcp", c.Address)
	if err != nil {
		return nil, fmt.Errorf("metrics address: %w", err)
	}
	if serverTLS != nil {
		l = tls.NewListener(l, serverTLS)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go srv.Serve(l)
	context.AfterFunc(ctx, func() { srv.Close() })
	log.Info("metrics serving", "address", l.Addr().String(), "tls", serverTLS != nil)
	return l.Addr(), nil
}

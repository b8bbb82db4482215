package hostd

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/symvirt/symvirt/hostd/migstream"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/qmp"
)

// migrationTLSConfig is this hostd's mutual-TLS configuration for
// migration streams, read afresh so renewed files take effect.
func (h *Host) migrationTLSConfig(server bool) (*tls.Config, error) {
	c := h.cfg
	var cfg *tls.Config
	var err error
	if server {
		cfg, err = pki.ServerConfig(c.TLSCert, c.TLSKey, c.TLSCA, pki.RoleHostd)
	} else {
		cfg, err = pki.ClientConfig(c.TLSCert, c.TLSKey, c.TLSCA, pki.RoleHostd)
	}
	if err != nil {
		return nil, fmt.Errorf("migration tls: %w", err)
	}
	cfg.DynamicRecordSizingDisabled = true
	// No post-handshake session tickets: a source that never reads (QEMU's
	// own TLS client does not) would close with them unread, so its kernel
	// resets the connection and ours drops the stream's unread tail.
	cfg.SessionTicketsDisabled = true
	return cfg, nil
}

// incomingStream makes mon wait for a migration stream and returns the
// address the source is to send it to. Without migration TLS, QEMU
// listens there itself; with it, hostd does (tunnel), and only a hostd
// certificate named from (any hostd's when from is "") may feed QEMU.
func (vm *VM) incomingStream(ctx context.Context, mon *qmp.Client, from string, wait time.Duration) (string, error) {
	h := vm.h
	if !h.cfg.migrationTLS() {
		port, err := migstream.FreePort(h.cfg.MigrationAddress, h.cfg.migrationPorts())
		if err != nil {
			return "", err
		}
		uri := "tcp:" + net.JoinHostPort(h.cfg.MigrationAddress, strconv.Itoa(port))
		return uri, mon.MigrateIncoming(ctx, uri)
	}
	cfg, err := h.migrationTLSConfig(true)
	if err != nil {
		return "", err
	}
	l, port, err := migstream.Listen(h.cfg.MigrationAddress, h.cfg.migrationPorts())
	if err != nil {
		return "", err
	}
	local, err := migstream.PassToQEMU(ctx, mon, migstream.InFD)
	if err != nil {
		l.Close()
		return "", err
	}
	migstream.StartAcceptor(l, cfg, from, local, vm.log, vm.exited(), wait)
	if err := mon.MigrateIncoming(ctx, "fd:"+migstream.InFD); err != nil {
		return "", err // the caller kills QEMU, which ends the acceptor
	}
	return "tcp:" + net.JoinHostPort(h.cfg.MigrationAddress, strconv.Itoa(port)), nil
}

// streamTo prepares the source's side of a migration to uri (checked:
// host is the destination's) and returns the URI to give QEMU's migrate.
// Without migration TLS that is uri itself and t is nil.
func (vm *VM) streamTo(ctx context.Context, mon *qmp.Client, uri, host string) (t *migstream.Out, qemuURI string, err error) {
	if !vm.h.cfg.migrationTLS() {
		return nil, uri, nil
	}
	cfg, err := vm.h.migrationTLSConfig(false)
	if err != nil {
		return nil, "", err
	}
	cfg.ServerName = host
	addr := strings.TrimPrefix(uri, "tcp:")
	conn, raw, err := migstream.Dial(ctx, cfg, addr)
	if err != nil {
		return nil, "", err
	}
	local, err := migstream.PassToQEMU(ctx, mon, migstream.OutFD)
	if err != nil {
		raw.Close()
		return nil, "", err
	}
	t = migstream.NewOut(conn, raw, local)
	vm.log.Info("migration stream over tls", "to", addr)
	return t, "fd:" + migstream.OutFD, nil
}

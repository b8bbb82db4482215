package hostd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/symvirt/symvirt/hostd/migstream"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/qmp"
)

// With migration TLS, hostd carries the stream itself: QEMU writes (or
// reads) plain migration data on one end of a socketpair, and hostd moves
// it over a crypto/tls connection between the two hostds. QEMU 7.2's own
// TLS channel sends every 4 KiB page as its own record and syscall, about
// twice the time of a plain stream; hostd sends full 16 KiB records, many
// per syscall. QEMU never sees the network address: the destination's
// QEMU takes data only from the one connection hostd accepted.

const (
	tunnelOutFD = "symvirt-migout"
	tunnelInFD  = "symvirt-migin"
	// tunnelChunk is how much one read from QEMU may carry into TLS.
	tunnelChunk = 1 << 20
	// tunnelHandshake bounds a connection's TLS handshake at either end.
	tunnelHandshake = 15 * time.Second
	// tunnelConnectWait is how long a destination waits for its source to
	// connect when no lease says otherwise.
	tunnelConnectWait = 2 * time.Minute
	// tunnelDrain bounds the wait, after QEMU finished, for the rest of
	// the stream to reach the destination.
	tunnelDrain = 60 * time.Second
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
	local, err := migstream.PassToQEMU(ctx, mon, tunnelInFD)
	if err != nil {
		l.Close()
		return "", err
	}
	vm.mu.Lock()
	exited := vm.exited
	vm.mu.Unlock()
	startAcceptor(l, cfg, from, local, vm.log, exited, wait)
	if err := mon.MigrateIncoming(ctx, "fd:"+tunnelInFD); err != nil {
		return "", err // the caller kills QEMU, which ends the acceptor
	}
	return "tcp:" + net.JoinHostPort(h.cfg.MigrationAddress, strconv.Itoa(port)), nil
}

// tunnelAcceptor takes the one connection allowed to feed an incoming
// QEMU and copies its stream into QEMU's socket.
type tunnelAcceptor struct {
	l     net.Listener
	cfg   *tls.Config
	from  string
	local *net.UnixConn
	log   *slog.Logger
	won   chan *tls.Conn
	stop  chan struct{}
}

// startAcceptor waits on l for the source named from (any hostd when
// from is "") and feeds its stream to local, QEMU's socket.
func startAcceptor(l net.Listener, cfg *tls.Config, from string, local *net.UnixConn, log *slog.Logger, exited <-chan struct{}, wait time.Duration) {
	a := &tunnelAcceptor{l: l, cfg: cfg, from: from, local: local, log: log, won: make(chan *tls.Conn), stop: make(chan struct{})}
	go a.run(exited, wait)
}

// run ends the listener at the first accepted source, when QEMU exits or
// when nobody came in time (QEMU then sees its stream end and fails).
func (a *tunnelAcceptor) run(exited <-chan struct{}, wait time.Duration) {
	go a.accept()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var c *tls.Conn
	select {
	case c = <-a.won:
	case <-timer.C:
		a.log.Warn("no migration source connected in time", "wait", wait)
	case <-exited:
	}
	close(a.stop)
	a.l.Close()
	if c == nil {
		a.local.Close()
		return
	}
	a.feed(c)
}

func (a *tunnelAcceptor) accept() {
	for {
		c, err := a.l.Accept()
		if err != nil {
			return
		}
		go a.handshake(c)
	}
}

// handshake admits c if it is the expected source; every other
// connection is closed before QEMU sees a byte of it.
func (a *tunnelAcceptor) handshake(c net.Conn) {
	tc := tls.Server(c, a.cfg)
	tc.SetDeadline(time.Now().Add(tunnelHandshake))
	err := tc.Handshake()
	if err == nil {
		err = a.check(tc.ConnectionState())
	}
	if err != nil {
		a.log.Warn("migration connection refused", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	select {
	case a.won <- tc:
	case <-a.stop:
		a.log.Warn("migration connection refused: the stream is taken", "remote", c.RemoteAddr().String())
		c.Close()
	}
}

func (a *tunnelAcceptor) check(cs tls.ConnectionState) error {
	role, name, ok := pki.PeerRole(cs)
	if !ok || role != pki.RoleHostd {
		return fmt.Errorf("not a hostd certificate: %w", ErrUnauthorized)
	}
	if a.from != "" && name != a.from {
		return fmt.Errorf("hostd %q is not this migration's source %q: %w", name, a.from, ErrUnauthorized)
	}
	return nil
}

// feed copies the source's stream into QEMU. Any error closes QEMU's
// socket, which fails its migration.
func (a *tunnelAcceptor) feed(c *tls.Conn) {
	defer c.Close()
	defer a.local.Close()
	a.log.Info("migration source connected", "remote", c.RemoteAddr().String())
	n, err := io.CopyBuffer(struct{ io.Writer }{a.local}, struct{ io.Reader }{c}, make([]byte, tunnelChunk))
	if err != nil {
		a.log.Warn("incoming migration stream broke", "bytes", n, "err", err)
		return
	}
	a.log.Debug("incoming migration stream complete", "bytes", n)
}

// outTunnel carries a source QEMU's stream to the destination hostd.
type outTunnel struct {
	conn  *tls.Conn
	raw   *batchConn
	local *net.UnixConn
	done  chan struct{}
	err   error
	once  sync.Once
}

// streamTo prepares the source's side of a migration to uri (checked:
// host is the destination's) and returns the URI to give QEMU's migrate.
// Without migration TLS that is uri itself and t is nil.
func (vm *VM) streamTo(ctx context.Context, mon *qmp.Client, uri, host string) (t *outTunnel, qemuURI string, err error) {
	if !vm.h.cfg.migrationTLS() {
		return nil, uri, nil
	}
	cfg, err := vm.h.migrationTLSConfig(false)
	if err != nil {
		return nil, "", err
	}
	cfg.ServerName = host
	addr := strings.TrimPrefix(uri, "tcp:")
	conn, raw, err := dialTunnel(ctx, cfg, addr)
	if err != nil {
		return nil, "", err
	}
	local, err := migstream.PassToQEMU(ctx, mon, tunnelOutFD)
	if err != nil {
		raw.Close()
		return nil, "", err
	}
	t = newOutTunnel(conn, raw, local)
	vm.log.Info("migration stream over tls", "to", addr)
	return t, "fd:" + tunnelOutFD, nil
}

// dialTunnel connects to a destination hostd's migration port with
// mutual TLS; cfg checks that the destination's certificate carries the
// address the source was told.
func dialTunnel(ctx context.Context, cfg *tls.Config, addr string) (*tls.Conn, *batchConn, error) {
	dctx, cancel := context.WithTimeout(ctx, tunnelHandshake)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("migration stream to %s: %w", addr, err)
	}
	raw := &batchConn{Conn: c}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(dctx); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("migration stream to %s: %w", addr, err)
	}
	return conn, raw, nil
}

func newOutTunnel(conn *tls.Conn, raw *batchConn, local *net.UnixConn) *outTunnel {
	t := &outTunnel{conn: conn, raw: raw, local: local, done: make(chan struct{})}
	go t.run()
	return t
}

// run copies QEMU's stream into TLS until QEMU closes its end, then ends
// the TLS stream and waits for the destination to close, so that nothing
// in flight is lost to a reset.
func (t *outTunnel) run() {
	defer close(t.done)
	buf := make([]byte, tunnelChunk)
	for {
		n, err := t.local.Read(buf)
		if n > 0 {
			if werr := t.write(buf[:n]); werr != nil {
				t.fail(fmt.Errorf("send to destination: %w", werr))
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.fail(fmt.Errorf("read from qemu: %w", err))
			return
		}
	}
	if err := t.conn.CloseWrite(); err != nil {
		t.fail(fmt.Errorf("end stream: %w", err))
		return
	}
	t.conn.SetReadDeadline(time.Now().Add(tunnelDrain))
	if _, err := io.Copy(io.Discard, t.conn); err != nil {
		t.fail(fmt.Errorf("destination did not end the stream: %w", err))
		return
	}
	t.conn.Close()
	t.local.Close()
}

// write sends p as full TLS records in as few syscalls as it can.
func (t *outTunnel) write(p []byte) error {
	t.raw.batch(true)
	_, err := t.conn.Write(p)
	if ferr := t.raw.batch(false); err == nil {
		err = ferr
	}
	return err
}

// fail records err and closes both ends: QEMU's migration fails.
func (t *outTunnel) fail(err error) {
	t.once.Do(func() { t.err = err })
	t.raw.Close()
	t.local.Close()
}

// finish waits, once QEMU reports the migration complete, for the rest
// of the stream to reach the destination. A nil t is a plain migration.
func (t *outTunnel) finish() error {
	if t == nil {
		return nil
	}
	select {
	case <-t.done:
	case <-time.After(tunnelDrain):
		t.fail(errors.New("the stream did not drain in time"))
		<-t.done
	}
	if t.err != nil {
		return fmt.Errorf("migration stream: %w", t.err)
	}
	return nil
}

// abort ends the stream (QEMU's migration fails) and returns what broke
// it, if the tunnel did.
func (t *outTunnel) abort(ctx context.Context, mon *qmp.Client) error {
	if t == nil {
		return nil
	}
	t.fail(errTunnelAborted)
	<-t.done
	mon.CloseFD(ctx, tunnelOutFD)
	if errors.Is(t.err, errTunnelAborted) {
		return nil
	}
	return t.err
}

var errTunnelAborted = errors.New("migration aborted")

// batchConn gathers what crypto/tls writes during one Write (one record
// per 16 KiB) into one send.
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batching {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

// batch turns gathering on, or off with a flush of what was gathered.
func (b *batchConn) batch(on bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = on
	if on || len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// withTunnelErr adds to a failed migration's error what broke its stream
// (QEMU only saw its socket close).
func withTunnelErr(err, tunErr error) error {
	if tunErr == nil {
		return err
	}
	return fmt.Errorf("%w (stream: %w)", err, tunErr)
}

package migstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/qmp"
)

// ErrNotSource: a connection to an incoming stream's port is not from the
// hostd the migration comes from; it is closed before QEMU sees a byte.
var ErrNotSource = errors.New("not the migration's source")

// With migration TLS, hostd carries the stream itself: QEMU writes (or
// reads) plain migration data on one end of a socketpair, and hostd moves
// it over a crypto/tls connection between the two hostds. QEMU 7.2's own
// TLS channel sends every 4 KiB page as its own record and syscall, about
// twice the time of a plain stream; hostd sends full 16 KiB records, many
// per syscall. QEMU never sees the network address: the destination's
// QEMU takes data only from the one connection hostd accepted.

const (
	// OutFD and InFD name QEMU's end of the socketpair (getfd) on a
	// source and a destination.
	OutFD = "symvirt-migout"
	InFD  = "symvirt-migin"
	// chunk is how much one read from QEMU may carry into TLS.
	chunk = 1 << 20
	// handshakeTimeout bounds a connection's TLS handshake at either end.
	handshakeTimeout = 15 * time.Second
	// ConnectWait is how long a destination waits for its source to
	// connect when no lease says otherwise.
	ConnectWait = 2 * time.Minute
	// drainTimeout bounds the wait, after QEMU finished, for the rest of
	// the stream to reach the destination.
	drainTimeout = 60 * time.Second
)

// acceptor takes the one connection allowed to feed an incoming
// QEMU and copies its stream into QEMU's socket.
type acceptor struct {
	l     net.Listener
	cfg   *tls.Config
	from  string
	local *net.UnixConn
	log   *slog.Logger
	won   chan *tls.Conn
	stop  chan struct{}
}

// StartAcceptor waits on l for the source named from (any hostd when
// from is "") and feeds its stream to local, QEMU's socket.
func StartAcceptor(l net.Listener, cfg *tls.Config, from string, local *net.UnixConn, log *slog.Logger, exited <-chan struct{}, wait time.Duration) {
	a := &acceptor{l: l, cfg: cfg, from: from, local: local, log: log, won: make(chan *tls.Conn), stop: make(chan struct{})}
	go a.run(exited, wait)
}

// run ends the listener at the first accepted source, when QEMU exits or
// when nobody came in time (QEMU then sees its stream end and fails).
func (a *acceptor) run(exited <-chan struct{}, wait time.Duration) {
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

func (a *acceptor) accept() {
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
func (a *acceptor) handshake(c net.Conn) {
	tc := tls.Server(c, a.cfg)
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
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

func (a *acceptor) check(cs tls.ConnectionState) error {
	role, name, ok := pki.PeerRole(cs)
	if !ok || role != pki.RoleHostd {
		return fmt.Errorf("not a hostd certificate: %w", ErrNotSource)
	}
	if a.from != "" && name != a.from {
		return fmt.Errorf("hostd %q is not this migration's source %q: %w", name, a.from, ErrNotSource)
	}
	return nil
}

// feed copies the source's stream into QEMU. Any error closes QEMU's
// socket, which fails its migration.
func (a *acceptor) feed(c *tls.Conn) {
	defer c.Close()
	defer a.local.Close()
	a.log.Info("migration source connected", "remote", c.RemoteAddr().String())
	n, err := io.CopyBuffer(struct{ io.Writer }{a.local}, struct{ io.Reader }{c}, make([]byte, chunk))
	if err != nil {
		a.log.Warn("incoming migration stream broke", "bytes", n, "err", err)
		return
	}
	a.log.Debug("incoming migration stream complete", "bytes", n)
}

// Out carries a source QEMU's stream to the destination hostd.
type Out struct {
	conn  *tls.Conn
	raw   *BatchConn
	local *net.UnixConn
	done  chan struct{}
	err   error
	once  sync.Once
}

// Dial connects to a destination hostd's migration port with
// mutual TLS; cfg checks that the destination's certificate carries the
// address the source was told.
func Dial(ctx context.Context, cfg *tls.Config, addr string) (*tls.Conn, *BatchConn, error) {
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("migration stream to %s: %w", addr, err)
	}
	raw := &BatchConn{Conn: c}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(dctx); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("migration stream to %s: %w", addr, err)
	}
	return conn, raw, nil
}

func NewOut(conn *tls.Conn, raw *BatchConn, local *net.UnixConn) *Out {
	t := &Out{conn: conn, raw: raw, local: local, done: make(chan struct{})}
	go t.run()
	return t
}

// run copies QEMU's stream into TLS until QEMU closes its end, then ends
// the TLS stream and waits for the destination to close, so that nothing
// in flight is lost to a reset.
func (t *Out) run() {
	defer close(t.done)
	buf := make([]byte, chunk)
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
	t.conn.SetReadDeadline(time.Now().Add(drainTimeout))
	if _, err := io.Copy(io.Discard, t.conn); err != nil {
		t.fail(fmt.Errorf("destination did not end the stream: %w", err))
		return
	}
	t.conn.Close()
	t.local.Close()
}

// write sends p as full TLS records in as few syscalls as it can.
func (t *Out) write(p []byte) error {
	t.raw.batch(true)
	_, err := t.conn.Write(p)
	if ferr := t.raw.batch(false); err == nil {
		err = ferr
	}
	return err
}

// fail records err and closes both ends: QEMU's migration fails.
func (t *Out) fail(err error) {
	t.once.Do(func() { t.err = err })
	t.raw.Close()
	t.local.Close()
}

// Finish waits, once QEMU reports the migration complete, for the rest
// of the stream to reach the destination. A nil t is a plain migration.
func (t *Out) Finish() error {
	if t == nil {
		return nil
	}
	select {
	case <-t.done:
	case <-time.After(drainTimeout):
		t.fail(errors.New("the stream did not drain in time"))
		<-t.done
	}
	if t.err != nil {
		return fmt.Errorf("migration stream: %w", t.err)
	}
	return nil
}

// Abort ends the stream (QEMU's migration fails) and returns what broke
// it, if the tunnel did.
func (t *Out) Abort(ctx context.Context, mon *qmp.Client) error {
	if t == nil {
		return nil
	}
	t.fail(errTunnelAborted)
	<-t.done
	mon.CloseFD(ctx, OutFD)
	if errors.Is(t.err, errTunnelAborted) {
		return nil
	}
	return t.err
}

var errTunnelAborted = errors.New("migration aborted")

// BatchConn gathers what crypto/tls writes during one Write (one record
// per 16 KiB) into one send.
type BatchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func (b *BatchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batching {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

// batch turns gathering on, or off with a flush of what was gathered.
func (b *BatchConn) batch(on bool) error {
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

// WithStreamErr adds to a failed migration's error what broke its stream
// (QEMU only saw its socket close).
func WithStreamErr(err, tunErr error) error {
	if tunErr == nil {
		return err
	}
	return fmt.Errorf("%w (stream: %w)", err, tunErr)
}

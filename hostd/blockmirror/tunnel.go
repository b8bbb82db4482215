package blockmirror

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

// ErrRefused: a connection to a storage migration's port is not from its
// source (certificate) or does not know its token.
var ErrRefused = errors.New("not the storage migration's source")

const (
	// tokenLen is the token's length on the wire (hex of 32 random bytes).
	tokenLen = 64
	// handshakeTimeout bounds the TLS handshake and the token's arrival.
	handshakeTimeout = 15 * time.Second
)

// NewToken returns a fresh one-time token.
func NewToken() (string, error) {
	b := make([]byte, tokenLen/2)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("storage migration token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// ServeOptions say whom a Server admits and where it joins them.
type ServeOptions struct {
	// TLS, when set, wraps every connection in a server handshake whose
	// peer must be a hostd certificate named From (any hostd when From
	// is "").
	TLS  *tls.Config
	From string
	// Token must be the first thing each connection sends.
	Token string
	// Conns is how many connections are admitted (one per disk).
	Conns int
	// Dial opens the backend (QEMU's NBD socket) for an admitted one.
	Dial func() (net.Conn, error)
	// Wait bounds how long the port stays open for the source.
	Wait time.Duration
	Log  *slog.Logger
}

// Server admits a storage migration's connections.
type Server struct {
	l      net.Listener
	o      ServeOptions
	mu     sync.Mutex
	left   int
	closed bool
	conns  []net.Conn
	stop   chan struct{}
	once   sync.Once
}

// Serve starts admitting connections on l.
func Serve(l net.Listener, o ServeOptions) *Server {
	s := &Server{l: l, o: o, left: o.Conns, stop: make(chan struct{})}
	go s.accept()
	go func() {
		t := time.NewTimer(o.Wait)
		defer t.Stop()
		select {
		case <-t.C:
			s.stopListening()
		case <-s.stop:
		}
	}()
	return s
}

// Close stops listening and ends every joined connection.
func (s *Server) Close() {
	s.stopListening()
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (s *Server) stopListening() {
	s.once.Do(func() {
		close(s.stop)
		s.l.Close()
	})
}

func (s *Server) accept() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		go s.admit(c)
	}
}

// admit checks c and joins it to a new backend connection, or closes it.
func (s *Server) admit(c net.Conn) {
	conn, err := s.check(c)
	if err == nil {
		err = s.take()
	}
	if err != nil {
		s.o.Log.Warn("storage migration connection refused", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	back, err := s.o.Dial()
	if err == nil && !s.track(conn, back) {
		back.Close()
		err = errors.New("storage migration closed")
	}
	if err != nil {
		s.o.Log.Warn("storage migration: backend", "err", err)
		conn.Close()
		return
	}
	s.o.Log.Info("storage migration connection admitted", "remote", c.RemoteAddr().String())
	Join(conn, back)
}

// check runs the TLS handshake (if any) and reads the token.
func (s *Server) check(c net.Conn) (net.Conn, error) {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	conn := c
	if s.o.TLS != nil {
		tc := tls.Server(c, s.o.TLS)
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("tls: %w: %w", err, ErrRefused)
		}
		if err := checkPeer(tc.ConnectionState(), s.o.From); err != nil {
			return nil, err
		}
		conn = tc
	}
	got := make([]byte, tokenLen)
	if _, err := io.ReadFull(conn, got); err != nil {
		return nil, fmt.Errorf("token: %w: %w", err, ErrRefused)
	}
	if subtle.ConstantTimeCompare(got, []byte(s.o.Token)) != 1 {
		return nil, fmt.Errorf("wrong token: %w", ErrRefused)
	}
	c.SetDeadline(time.Time{})
	return conn, nil
}

// take uses up one of the admissions; the last one stops listening.
func (s *Server) take() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left <= 0 || s.closed {
		return fmt.Errorf("every connection is taken: %w", ErrRefused)
	}
	s.left--
	if s.left == 0 {
		go s.stopListening()
	}
	return nil
}

// track records a joined pair for Close; false once closed.
func (s *Server) track(cs ...net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns = append(s.conns, cs...)
	return true
}

func checkPeer(cs tls.ConnectionState, from string) error {
	role, name, ok := pki.PeerRole(cs)
	if !ok || role != pki.RoleHostd {
		return fmt.Errorf("not a hostd certificate: %w", ErrRefused)
	}
	if from != "" && name != from {
		return fmt.Errorf("hostd %q is not this migration's source %q: %w", name, from, ErrRefused)
	}
	return nil
}

// Connect dials a destination's storage port (mutual TLS when cfg is
// set; cfg.ServerName must be the destination's address) and presents
// the token.
func Connect(ctx context.Context, addr string, cfg *tls.Config, token string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("storage migration to %s: %w", addr, err)
	}
	conn := c
	if cfg != nil {
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("storage migration to %s: %w", addr, err)
		}
		conn = tc
	}
	if _, err := io.WriteString(conn, token); err != nil {
		conn.Close()
		return nil, fmt.Errorf("storage migration to %s: %w", addr, err)
	}
	return conn, nil
}

// Join copies both ways between a and b; when either direction ends,
// both connections are closed (NBD has no half-close to keep).
func Join(a, b net.Conn) {
	var once sync.Once
	closeBoth := func() { a.Close(); b.Close() }
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		once.Do(closeBoth)
	}
	go cp(a, b)
	go cp(b, a)
}

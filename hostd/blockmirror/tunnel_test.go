package blockmirror

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

// backend stands for QEMU's NBD socket: it counts the connections hostd
// opens to it and echoes what they carry.
type backend struct {
	path  string
	dials atomic.Int32
}

func newBackend(t *testing.T) *backend {
	b := &backend{path: filepath.Join(t.TempDir(), "nbd.sock")}
	l, err := net.Listen("unix", b.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return b
}

func (b *backend) dial() (net.Conn, error) {
	b.dials.Add(1)
	return net.Dial("unix", b.path)
}

func serve(t *testing.T, b *backend, cfg *tls.Config, from, token string, conns int) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(l, ServeOptions{TLS: cfg, From: from, Token: token, Conns: conns, Dial: b.dial,
		Wait: time.Minute, Log: slog.Default()})
	t.Cleanup(s.Close)
	return l.Addr().String()
}

// roundTrip reports whether a message sent over c comes back (it went
// through the backend).
func roundTrip(c net.Conn) bool {
	if c == nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "NBD-payload"); err != nil {
		return false
	}
	buf := make([]byte, len("NBD-payload"))
	_, err := io.ReadFull(c, buf)
	return err == nil && string(buf) == "NBD-payload"
}

type certs struct{ dir, rogue string }

func newCerts(t *testing.T) certs {
	c := certs{dir: t.TempDir(), rogue: t.TempDir()}
	for _, d := range []string{c.dir, c.rogue} {
		if err := pki.Init(d, pki.InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(dir string, role pki.Role, name string) {
		var hosts []string
		if role == pki.RoleHostd {
			hosts = []string{"127.0.0.1"}
		}
		if _, _, err := pki.Issue(dir, role, name, hosts, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	issue(c.dir, pki.RoleHostd, "a")
	issue(c.dir, pki.RoleHostd, "b")
	issue(c.dir, pki.RoleHostd, "c")
	issue(c.dir, pki.RoleClient, "admin")
	issue(c.dir, pki.RoleCoord, "coord")
	issue(c.rogue, pki.RoleHostd, "a")
	return c
}

func (c certs) client(t *testing.T, dir string, role pki.Role, name string) *tls.Config {
	crt, key := pki.CertPaths(dir, role, name)
	cfg, err := pki.ClientConfig(crt, key, filepath.Join(dir, pki.CACertFile), pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	if dir != c.dir {
		// The rogue trusts the cluster's CA: only its own certificate is foreign.
		cfg.RootCAs = c.client(t, c.dir, pki.RoleHostd, "c").RootCAs
	}
	cfg.ServerName = "127.0.0.1"
	return cfg
}

func (c certs) server(t *testing.T) *tls.Config {
	crt, key := pki.CertPaths(c.dir, pki.RoleHostd, "b")
	cfg, err := pki.ServerConfig(crt, key, filepath.Join(c.dir, pki.CACertFile), pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func connect(addr string, cfg *tls.Config, token string) net.Conn {
	c, err := Connect(context.Background(), addr, cfg, token)
	if err != nil {
		return nil
	}
	return c
}

// TestServeAdmitsOnlyTheSource mounts the attacks on a destination's
// storage port with migration TLS: a plain connection with the right
// token, another hostd's, a client's, a coordinator's certificate, a
// certificate of another CA in the source's name, and the source's own
// certificate with a wrong token: none reaches the backend (QEMU's NBD
// server). Then the source with its token is joined, and once the one
// connection per disk is taken even the source is refused.
func TestServeAdmitsOnlyTheSource(t *testing.T) {
	c := newCerts(t)
	b := newBackend(t)
	token, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, b, c.server(t), "a", token, 1)
	other, _ := NewToken()
	attacks := map[string]net.Conn{
		"plain with the token":       connect(addr, nil, token),
		"hostd c":                    connect(addr, c.client(t, c.dir, pki.RoleHostd, "c"), token),
		"client certificate":         connect(addr, c.client(t, c.dir, pki.RoleClient, "admin"), token),
		"coordinator certificate":    connect(addr, c.client(t, c.dir, pki.RoleCoord, "coord"), token),
		"another CA's hostd a":       connect(addr, c.client(t, c.rogue, pki.RoleHostd, "a"), token),
		"hostd a with a wrong token": connect(addr, c.client(t, c.dir, pki.RoleHostd, "a"), other),
	}
	for name, conn := range attacks {
		if roundTrip(conn) {
			t.Errorf("%s: reached the backend", name)
		}
	}
	if n := b.dials.Load(); n != 0 {
		t.Fatalf("the backend was dialled %d times by refused connections", n)
	}
	if !roundTrip(connect(addr, c.client(t, c.dir, pki.RoleHostd, "a"), token)) {
		t.Fatal("the source with its token was not joined to the backend")
	}
	if roundTrip(connect(addr, c.client(t, c.dir, pki.RoleHostd, "a"), token)) {
		t.Error("a second connection was admitted past the one per disk")
	}
	if n := b.dials.Load(); n != 1 {
		t.Errorf("backend dialled %d times, want 1", n)
	}
}

// TestServePlainToken: without migration TLS only the token admits; a
// connection without it never reaches the backend.
func TestServePlainToken(t *testing.T) {
	b := newBackend(t)
	token, _ := NewToken()
	addr := serve(t, b, nil, "", token, 2)
	wrong, _ := NewToken()
	if roundTrip(connect(addr, nil, wrong)) || roundTrip(connect(addr, nil, token[:10])) {
		t.Fatal("a connection without the token reached the backend")
	}
	if n := b.dials.Load(); n != 0 {
		t.Fatalf("backend dialled %d times by refused connections", n)
	}
	for i := range 2 {
		if !roundTrip(connect(addr, nil, token)) {
			t.Fatalf("connection %d with the token was not joined", i)
		}
	}
}

// TestCloseEndsJoined: Close ends connections already joined.
func TestCloseEndsJoined(t *testing.T) {
	b := newBackend(t)
	token, _ := NewToken()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(l, ServeOptions{Token: token, Conns: 1, Dial: b.dial, Wait: time.Minute, Log: slog.Default()})
	c := connect(l.Addr().String(), nil, token)
	if c == nil {
		t.Fatal("connect failed")
	}
	io.WriteString(c, "x")
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	s.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err == nil {
		t.Fatal("a joined connection outlived Close")
	}
}

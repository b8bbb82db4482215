package migstream

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

type tunnelPKI struct {
	dir, other string
}

func newTunnelPKI(t *testing.T) tunnelPKI {
	t.Helper()
	p := tunnelPKI{dir: t.TempDir(), other: t.TempDir()}
	for _, d := range []string{p.dir, p.other} {
		if err := pki.Init(d, pki.InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		dir  string
		role pki.Role
		name string
	}{{p.dir, pki.RoleHostd, "dst"}, {p.dir, pki.RoleHostd, "src"}, {p.dir, pki.RoleHostd, "other"},
		{p.dir, pki.RoleClient, "admin"}, {p.dir, pki.RoleCoord, "coord"}, {p.other, pki.RoleHostd, "src"}} {
		if _, _, err := pki.Issue(c.dir, c.role, c.name, nil, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// client is a TLS client configuration with dir's role/name certificate
// that trusts any server (a rogue wants in, whoever listens).
func (p tunnelPKI) client(t *testing.T, dir string, role pki.Role, name string) *tls.Config {
	t.Helper()
	cert, key := pki.CertPaths(dir, role, name)
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	// GetClientCertificate: present it even where the server asks for
	// another CA's.
	return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }}
}

// qemuSide stands for QEMU: the other end of a socketpair, pollable.
func qemuSide(t *testing.T) (qemu net.Conn, ours *net.UnixConn) {
	t.Helper()
	f, ours, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	qemu, err = net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemu.Close(); ours.Close() })
	return qemu, ours
}

// startTestAcceptor is a destination waiting for source "src".
func startTestAcceptor(t *testing.T, p tunnelPKI, wait time.Duration) (addr string, qemu net.Conn) {
	t.Helper()
	cert, key := pki.CertPaths(p.dir, pki.RoleHostd, "dst")
	cfg, err := pki.ServerConfig(cert, key, filepath.Join(p.dir, "ca.crt"), pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	qemu, local := qemuSide(t)
	StartAcceptor(l, cfg, "src", local, slog.Default(), make(chan struct{}), wait)
	return l.Addr().String(), qemu
}

// TestTunnelFeedsOnlyTheGrantedSource: connections with another CA's
// hostd certificate, the CA's client, coordinator or another hostd's
// certificate, and plain TCP, all send a stream to a waiting destination
// and none of it reaches QEMU's socket; then the granted source's stream
// arrives intact, and nobody else can connect afterwards.
func TestTunnelFeedsOnlyTheGrantedSource(t *testing.T) {
	p := newTunnelPKI(t)
	addr, qemu := startTestAcceptor(t, p, time.Minute)
	ctx := context.Background()
	junk := bytes.Repeat([]byte("QEVM rogue stream "), 1000)
	for _, r := range []struct {
		what string
		cfg  *tls.Config
	}{
		{"another CA's hostd src", p.client(t, p.other, pki.RoleHostd, "src")},
		{"client admin", p.client(t, p.dir, pki.RoleClient, "admin")},
		{"coord", p.client(t, p.dir, pki.RoleCoord, "coord")},
		{"hostd other", p.client(t, p.dir, pki.RoleHostd, "other")},
		{"plain tcp", nil},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", r.what, err)
		}
		if r.cfg != nil {
			tc := tls.Client(c, r.cfg)
			if err := tc.HandshakeContext(ctx); err == nil {
				tc.Write(junk) // TLS 1.3: the server judges the client after this side is done
			}
			c = tc
		} else {
			c.Write(junk)
		}
		// Wait until the destination has closed it.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: the destination kept the connection open", r.what)
		}
		c.Close()
		qemu.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := qemu.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%s: QEMU's socket got %d bytes, err %v; want nothing", r.what, n, err)
		}
	}

	cert, key := pki.CertPaths(p.dir, pki.RoleHostd, "src")
	src, err := pki.ClientConfig(cert, key, filepath.Join(p.dir, "ca.crt"), pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	src.ServerName = "127.0.0.1"
	conn, raw, err := Dial(ctx, src, addr)
	if err != nil {
		t.Fatal(err)
	}
	srcQEMU, srcLocal := qemuSide(t)
	tun := NewOut(conn, raw, srcLocal)
	stream := make([]byte, 8<<20+123)
	rand.Read(stream)
	go func() { srcQEMU.Write(stream); srcQEMU.Close() }()
	qemu.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(qemu)
	if err != nil || !bytes.Equal(got, stream) {
		t.Fatalf("the source's stream: %d of %d bytes, equal %v, err %v", len(got), len(stream), bytes.Equal(got, stream), err)
	}
	if err := tun.Finish(); err != nil {
		t.Fatalf("finish: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the destination still listens after its source connected")
	}
}

// TestTunnelListenerDeadline: nobody connects in time; the listener
// closes and QEMU's socket ends, which fails its incoming migration.
func TestTunnelListenerDeadline(t *testing.T) {
	p := newTunnelPKI(t)
	addr, qemu := startTestAcceptor(t, p, 200*time.Millisecond)
	qemu.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := qemu.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("QEMU's socket: %d bytes, err %v; want EOF", n, err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the destination still listens after its deadline")
	}
}

// TestTunnelSourceBreaks: the destination goes away mid-stream; the
// source's tunnel closes QEMU's socket (QEMU's migration fails) and
// reports why.
func TestTunnelSourceBreaks(t *testing.T) {
	p := newTunnelPKI(t)
	cert, key := pki.CertPaths(p.dir, pki.RoleHostd, "dst")
	cfg, err := pki.ServerConfig(cert, key, filepath.Join(p.dir, "ca.crt"), pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Read(make([]byte, 1000))
			c.Close()
		}
	}()
	src := p.client(t, p.dir, pki.RoleHostd, "src")
	conn, raw, err := Dial(context.Background(), src, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srcQEMU, srcLocal := qemuSide(t)
	tun := NewOut(conn, raw, srcLocal)
	buf := make([]byte, 1<<20)
	var werr error
	for i := 0; i < 200 && werr == nil; i++ {
		srcQEMU.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, werr = srcQEMU.Write(buf)
	}
	if werr == nil || errors.Is(werr, os.ErrDeadlineExceeded) {
		t.Fatalf("QEMU's writes: %v; want its socket closed", werr)
	}
	if err := tun.Finish(); err == nil {
		t.Fatalf("finish: nil error after the destination went away")
	}
}

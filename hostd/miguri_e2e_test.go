package hostd_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testenv"
)

// fakePeer is a hostd impostor: it answers /v1/incoming with a chosen
// migration URI and records what the source asks of it.
type fakePeer struct {
	mu     sync.Mutex
	uri    string
	calls  []string
	server *http.Server
}

func (p *fakePeer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.calls = append(p.calls, r.Method+" "+r.URL.Path)
	uri := p.uri
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/v1/incoming" {
		json.NewEncoder(w).Encode(hostd.IncomingResponse{URI: uri})
		return
	}
	w.Write([]byte("{}"))
}

func (p *fakePeer) answer(uri string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.uri, p.calls = uri, nil
}

func (p *fakePeer) called(call string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.calls {
		if strings.HasSuffix(c, call) {
			return true
		}
	}
	return false
}

func startFakePeer(t *testing.T, l net.Listener) *fakePeer {
	p := &fakePeer{}
	p.server = &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	go p.server.Serve(l)
	t.Cleanup(func() { p.server.Close() })
	return p
}

func freeLoopbackPort(t *testing.T, ip string) string {
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestMigrateRefusesPeerURI mounts the attack of a destination that
// answers the source's /v1/incoming with a URI of its own: "exec:..."
// would run a shell command as root on the source, others would send
// guest RAM elsewhere. The impostor is a real peer: on a unix socket
// (the plain same-host path) and over mutual TLS with a valid hostd
// certificate. The source refuses each URI before QEMU sees it, tells
// the peer to abort, and the VM keeps running with its device.
func TestMigrateRefusesPeerURI(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Binary(t)
	certs := t.TempDir()
	for _, args := range [][]string{
		{"certs", "init", "--dir", certs},
		{"certs", "issue", "--dir", certs, "--role", "hostd", "--name", "src", "--host", "127.0.0.1"},
		{"certs", "issue", "--dir", certs, "--role", "hostd", "--name", "peer", "--host", "127.0.0.2"},
		{"certs", "issue", "--dir", certs, "--role", "coord", "--name", "coord"},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("symvirt %v: %v\n%s", args, err, out)
		}
	}
	cert := func(name, ext string) string { return filepath.Join(certs, "hostd-"+name+"."+ext) }
	ca := filepath.Join(certs, "ca.crt")
	src := testenv.StartHostd(t, "src", nil, freeLoopbackPort(t, "127.0.0.1"),
		"pools:\n  nic:\n    - {mac: \"52:54:00:aa:00:01\"}\n",
		"--tls-cert", cert("src", "crt"), "--tls-key", cert("src", "key"), "--tls-ca", ca)
	ctx := ctxT(t, 4*time.Minute)
	c := src.Client()
	if _, err := c.Create(ctx, guestSpec(t, "mu1", "nic"), true); err != nil {
		t.Fatal(err)
	}
	slog := serialLog(src, "mu1")
	waitCounter(t, slog, 3, 90*time.Second)

	sock := filepath.Join(t.TempDir(), "peer.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	plain := startFakePeer(t, ul)
	peerTLS, err := pki.ServerConfig(cert("peer", "crt"), cert("peer", "key"), ca, pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	peerAddr := freeLoopbackPort(t, "127.0.0.2")
	tl, err := net.Listen("tcp", peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	mtls := startFakePeer(t, tls.NewListener(tl, peerTLS))

	marker := filepath.Join(t.TempDir(), "pwned")
	for _, c2 := range []struct {
		peer     *fakePeer
		to, uri  string
		whyInErr string
	}{
		{plain, sock, "exec:touch " + marker, "want tcp:HOST:PORT"},
		{plain, sock, "tcp:10.1.2.3:49200", "loopback"},
		{mtls, peerAddr, "exec:touch " + marker, "want tcp:HOST:PORT"},
		{mtls, peerAddr, "unix:" + marker, "want tcp:HOST:PORT"},
		{mtls, peerAddr, "tcp:127.0.0.3:49200", "not the destination's"},
		{mtls, peerAddr, "tcp:127.0.0.2:22", "outside migration_ports"},
	} {
		c2.peer.answer(c2.uri)
		// The coordinator granted the migration; the peer abuses it.
		grant := coordGrant(t, certs, "mu1", "src", "peer")
		_, err := c.Migrate(ctx, "mu1", hostd.MigrateOptions{To: c2.to, Grant: grant}, nil)
		if !errors.Is(err, hostd.ErrMigration) || !strings.Contains(err.Error(), c2.uri) ||
			!strings.Contains(err.Error(), c2.whyInErr) || !strings.Contains(err.Error(), "unauthorized") {
			t.Fatalf("peer %s answering %q: %v, want ErrMigration (unauthorized) naming the URI and %q", c2.to, c2.uri, err, c2.whyInErr)
		}
		if !c2.peer.called("/incoming") {
			t.Fatalf("peer %s was never asked for an incoming migration: the attack did not happen", c2.to)
		}
		if !c2.peer.called("/incoming/abort") {
			t.Errorf("peer %s answering %q: the source did not abort the destination", c2.to, c2.uri)
		}
		if _, err := os.Stat(marker); !os.IsNotExist(err) {
			t.Fatalf("peer %s answering %q: %s exists: the source ran the peer's command", c2.to, c2.uri, marker)
		}
		assertRunningWith(t, c, "mu1", "pt0", slog)
	}
}

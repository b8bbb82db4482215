package hostd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

// grantFixture is a CA with a coordinator and three hostds (a, b, c), and
// host b's view of them.
type grantFixture struct {
	dir   string
	coord *pki.Signer
	h     *Host // host b
}

func newGrantFixture(t *testing.T) grantFixture {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	issue := func(role pki.Role, name string) {
		if _, _, err := pki.Issue(dir, role, name, []string{"127.0.0.1"}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	issue(pki.RoleCoord, "coord")
	for _, n := range []string{"a", "b", "c"} {
		issue(pki.RoleHostd, n)
	}
	cert, key := pki.CertPaths(dir, pki.RoleHostd, "b")
	pa, err := NewPeerAuth(cert, key, filepath.Join(dir, pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if pa.Self != "b" {
		t.Fatalf("PeerAuth.Self = %q, want b (from the certificate)", pa.Self)
	}
	return grantFixture{dir: dir, coord: loadSigner(t, dir, pki.RoleCoord, "coord"), h: &Host{PeerAuth: pa}}
}

func loadSigner(t *testing.T, dir string, role pki.Role, name string) *pki.Signer {
	t.Helper()
	s, err := pki.LoadSigner(pki.CertPaths(dir, role, name))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sign(t *testing.T, s *pki.Signer, g MigrationGrant) *Grant {
	t.Helper()
	gr, err := SignGrant(s, g)
	if err != nil {
		t.Fatal(err)
	}
	return gr
}

func asCaller(role pki.Role, name string) context.Context {
	return context.WithValue(context.Background(), callerKey{}, Caller{Role: role, Name: name})
}

// Every way a peer holding a valid hostd certificate might hand over a VM
// without the coordinator's say-so is refused; the coordinator's own grant
// for exactly this hand-over is accepted (the control).
func TestAdmitIncoming(t *testing.T) {
	f := newGrantFixture(t)
	good := MigrationGrant{Op: "op1", VM: "vm1", Source: "c", Dest: "b", Expires: time.Now().Add(time.Minute)}
	with := func(mod func(*MigrationGrant)) MigrationGrant { g := good; mod(&g); return g }
	req := func(gr *Grant) IncomingRequest {
		return IncomingRequest{Spec: Spec{Name: "vm1"}, Op: "op1", Grant: gr}
	}
	tampered := sign(t, f.coord, good)
	tampered.Payload = []byte(strings.Replace(string(tampered.Payload), `"vm1"`, `"vm2"`, 1))
	cases := []struct {
		name string
		req  IncomingRequest
		want string
	}{
		{"no grant", req(nil), "no migration grant"},
		{"grant for another source", req(sign(t, f.coord, with(func(g *MigrationGrant) { g.Source = "a" }))), `source "a"`},
		{"grant for another destination", req(sign(t, f.coord, with(func(g *MigrationGrant) { g.Dest = "c" }))), `destination "c"`},
		{"grant for another vm", req(sign(t, f.coord, with(func(g *MigrationGrant) { g.VM = "vm9" }))), `vm "vm9"`},
		{"grant for another operation", req(sign(t, f.coord, with(func(g *MigrationGrant) { g.Op = "op0" }))), `operation "op0"`},
		{"expired grant", req(sign(t, f.coord, with(func(g *MigrationGrant) { g.Expires = time.Now().Add(-time.Second) }))), "expired"},
		{"tampered grant", IncomingRequest{Spec: Spec{Name: "vm2"}, Op: "op1", Grant: tampered}, "does not match"},
		{"grant signed by a hostd", req(sign(t, loadSigner(t, f.dir, pki.RoleHostd, "c"), good)), "may not sign"},
	}
	for _, c := range cases {
		from, err := f.h.admitIncoming(asCaller(pki.RoleHostd, "c"), c.req)
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), c.want) || from != "" {
			t.Errorf("%s: admitIncoming = %q, %v; want ErrUnauthorized saying %q", c.name, from, err, c.want)
		} else if !strings.Contains(err.Error(), "hostd/c may not hand over") {
			t.Errorf("%s: %v does not name the caller", c.name, err)
		}
	}
	if from, err := f.h.admitIncoming(asCaller(pki.RoleHostd, "c"), req(sign(t, f.coord, good))); err != nil || from != "c" {
		t.Fatalf("the coordinator's grant: admitIncoming = %q, %v; want source c", from, err)
	}
	// The coordinator and local root need no grant; no peer may touch
	// what they create.
	for _, ctx := range []context.Context{asCaller(pki.RoleCoord, "coord"), context.Background()} {
		if from, err := f.h.admitIncoming(ctx, req(nil)); err != nil || from != "" {
			t.Errorf("%s: admitIncoming = %q, %v", callerFrom(ctx), from, err)
		}
	}
}

// The route filter in front of the API: a peer hostd reaches only its own
// migrations; the coordinator and local root reach everything.
func TestAuthorizeRoutes(t *testing.T) {
	f := newGrantFixture(t)
	h := f.h
	h.vms = map[string]*VM{
		"fromA": {name: "fromA", rt: runtimeState{From: "a"}},
		"local": {name: "local"},
	}
	handler := h.authorize(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("reached"))
	}))
	as := func(role pki.Role, name string) *tls.ConnectionState {
		if role == "" {
			return nil
		}
		data, err := os.ReadFile(must(pki.CertPaths(f.dir, role, name)))
		if err != nil {
			t.Fatal(err)
		}
		certs, err := pki.ParseCertsPEM(data)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{certs}}
	}
	cases := []struct {
		role         pki.Role
		name, method string
		path         string
		want         int
	}{
		{pki.RoleHostd, "a", "GET", "/v1/vms/fromA", 200},
		{pki.RoleHostd, "a", "POST", "/v1/vms/fromA/incoming/abort", 200},
		{pki.RoleHostd, "a", "POST", "/v1/vms/fromA/incoming/finish", 200},
		{pki.RoleHostd, "a", "POST", "/v1/incoming", 200}, // the grant is checked in Incoming
		{pki.RoleHostd, "a", "GET", "/v1/vms/nope", 404},
		{pki.RoleHostd, "c", "GET", "/v1/vms/fromA", 403},
		{pki.RoleHostd, "c", "POST", "/v1/vms/fromA/incoming/abort", 403},
		{pki.RoleHostd, "c", "POST", "/v1/vms/fromA/incoming/finish", 403},
		{pki.RoleHostd, "a", "POST", "/v1/vms/fromA/incoming/frames", 200},
		{pki.RoleHostd, "c", "POST", "/v1/vms/fromA/incoming/frames", 403},
		{pki.RoleHostd, "a", "POST", "/v1/vms/local/incoming/frames", 403},
		{pki.RoleHostd, "a", "DELETE", "/v1/vms/fromA", 403},
		{pki.RoleHostd, "a", "POST", "/v1/vms/fromA/stop", 403},
		{pki.RoleHostd, "a", "GET", "/v1/vms/local", 403},
		{pki.RoleHostd, "a", "POST", "/v1/vms/local/incoming/abort", 403},
		{pki.RoleHostd, "a", "POST", "/v1/host/restart", 403},
		{pki.RoleHostd, "a", "POST", "/v1/steps", 403},
		{pki.RoleHostd, "a", "GET", "/v1/vms", 403},
		{pki.RoleClient, "c", "GET", "/v1/vms", 403},
		{pki.RoleCoord, "coord", "DELETE", "/v1/vms/local", 200},
		{pki.RoleCoord, "coord", "POST", "/v1/host/restart", 200},
		{"", "", "POST", "/v1/host/restart", 200}, // unix socket: local root
	}
	if _, _, err := pki.Issue(f.dir, pki.RoleClient, "c", nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, c.path, nil)
		r.TLS = as(c.role, c.name)
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s/%s %s %s: %d %s, want %d", c.role, c.name, c.method, c.path, w.Code, w.Body, c.want)
		}
		if w.Code == 403 && !strings.Contains(w.Body.String(), `"unauthorized"`) {
			t.Errorf("%s/%s %s %s: refusal without the unauthorized code: %s", c.role, c.name, c.method, c.path, w.Body)
		}
	}
}

func must(cert, _ string) string { return cert }

// A direct migration (symvirt vm migrate) between TLS hostds carries no
// coordinator grant: it is refused before anything is paused, pointing at
// the coordinator; without TLS (unix sockets, tests) it goes on.
func TestDirectMigrationBetweenTLSHostdsRefused(t *testing.T) {
	tlsHost := &Host{PeerTLS: &tls.Config{}}
	err := tlsHost.directMigrationRefused("vm1", MigrateOptions{To: "10.0.0.2:7070"})
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "symvirt migrate vm1 --to HOST") {
		t.Fatalf("direct migration between TLS hostds: %v", err)
	}
	if err := (&Host{}).directMigrationRefused("vm1", MigrateOptions{To: "10.0.0.2:7070"}); err != nil {
		t.Fatalf("direct migration without TLS: %v", err)
	}
	if err := tlsHost.directMigrationRefused("vm1", MigrateOptions{To: "/run/b/hostd.sock"}); err != nil {
		t.Fatalf("direct migration to a local unix socket: %v", err)
	}
	// The destination judges the grant itself (TestAdmitIncoming).
	if err := tlsHost.directMigrationRefused("vm1", MigrateOptions{To: "10.0.0.2:7070", Grant: &Grant{}}); err != nil {
		t.Fatalf("direct migration with a grant: %v", err)
	}
}

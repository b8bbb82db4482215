package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fixture is a PKI directory with a CA and one certificate per role, plus a
// second, unrelated CA with a coord certificate of the same name.
type fixture struct {
	dir, otherDir string
	ca            string // dir/ca.crt
}

func (f fixture) paths(role Role, name string) (string, string) { return CertPaths(f.dir, role, name) }

func newFixture(t *testing.T) fixture {
	t.Helper()
	f := fixture{dir: filepath.Join(t.TempDir(), "pki"), otherDir: filepath.Join(t.TempDir(), "other")}
	f.ca = filepath.Join(f.dir, CACertFile)
	for _, d := range []string{f.dir, f.otherDir} {
		if err := Init(d, InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mustIssue(t, f.dir, RoleCoord, "c1", []string{"coord.example"})
	mustIssue(t, f.dir, RoleHostd, "h1", []string{"h1.example", "10.0.0.1"})
	mustIssue(t, f.dir, RoleHostd, "h2", nil)
	mustIssue(t, f.dir, RoleClient, "op", nil)
	mustIssue(t, f.otherDir, RoleCoord, "c1", nil)
	return f
}

func mustIssue(t *testing.T, dir string, role Role, name string, hosts []string) {
	t.Helper()
	if _, _, err := Issue(dir, role, name, hosts, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// syncBuffer collects an http.Server's ErrorLog.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitLog waits for the server to log want (handshake errors are logged
// asynchronously to the client seeing the alert).
func waitLog(t *testing.T, logs *syncBuffer, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := logs.String()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server log %q: want %q", s, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// server starts an httptest TLS server on 127.0.0.1 that answers with the
// peer's role/name.
func server(t *testing.T, cfg *tls.Config) (*httptest.Server, *syncBuffer, *atomic.Int32) {
	t.Helper()
	logs := &syncBuffer{}
	calls := new(atomic.Int32)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.TLS == nil {
			http.Error(w, "no TLS", http.StatusForbidden)
			return
		}
		role, name, ok := PeerRole(*r.TLS)
		if !ok {
			http.Error(w, "no role", http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, "%s/%s", role, name)
	}))
	srv.TLS = cfg
	srv.Config.ErrorLog = log.New(logs, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, logs, calls
}

func httpClient(t *testing.T, cfg *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(c *http.Client, url string) (string, *http.Response, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp, err
}

func clientConfig(t *testing.T, f fixture, dir string, role Role, name string, expect ...Role) *tls.Config {
	t.Helper()
	cert, key := CertPaths(dir, role, name)
	cfg, err := ClientConfig(cert, key, f.ca, expect...)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func serverConfig(t *testing.T, f fixture, role Role, name string, allow ...Role) *tls.Config {
	t.Helper()
	cert, key := f.paths(role, name)
	cfg, err := ServerConfig(cert, key, f.ca, allow...)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestInitAndIssueFiles(t *testing.T) {
	f := newFixture(t)
	if m := mode(t, f.dir); m != 0o700 {
		t.Errorf("dir mode %o, want 700", m)
	}
	want := map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600}
	for _, r := range []struct {
		role Role
		name string
	}{{RoleCoord, "c1"}, {RoleHostd, "h1"}, {RoleHostd, "h2"}, {RoleClient, "op"}} {
		want[string(r.role)+"-"+r.name+".crt"] = 0o644
		want[string(r.role)+"-"+r.name+".key"] = 0o600
	}
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
		if m, ok := want[e.Name()]; !ok {
			t.Errorf("unexpected file %s (temporary file left behind?)", e.Name())
		} else if pm := mode(t, filepath.Join(f.dir, e.Name())); pm != m {
			t.Errorf("%s: mode %o, want %o", e.Name(), pm, m)
		}
	}
	if len(got) != len(want) {
		t.Errorf("files %v, want %d files", got, len(want))
	}

	ca := readCert(t, f.ca)
	if !ca.IsCA || !ca.MaxPathLenZero || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA: IsCA %v MaxPathLenZero %v KeyUsage %v", ca.IsCA, ca.MaxPathLenZero, ca.KeyUsage)
	}
	if pk, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || pk.Curve != elliptic.P256() {
		t.Errorf("CA key %T, want ECDSA P-256", ca.PublicKey)
	}
	if life := ca.NotAfter.Sub(ca.NotBefore); life < 10*365*24*time.Hour || life > 10*366*24*time.Hour {
		t.Errorf("CA validity %s, want 10 years", life)
	}

	coord := readCert(t, filepath.Join(f.dir, "coord-c1.crt"))
	if coord.Subject.CommonName != "c1" || !slices.Equal(coord.Subject.OrganizationalUnit, []string{"symvirt-coord"}) {
		t.Errorf("coord subject %s", coord.Subject)
	}
	if len(coord.URIs) != 1 || coord.URIs[0].String() != "symvirt://coord/c1" {
		t.Errorf("coord URIs %v", coord.URIs)
	}
	if !slices.Equal(coord.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("coord ExtKeyUsage %v", coord.ExtKeyUsage)
	}
	if !slices.Equal(coord.DNSNames, []string{"localhost", "coord.example"}) {
		t.Errorf("coord DNS SANs %v", coord.DNSNames)
	}
	if err := coord.CheckSignatureFrom(ca); err != nil {
		t.Error(err)
	}

	h1 := readCert(t, filepath.Join(f.dir, "hostd-h1.crt"))
	var ips []string
	for _, ip := range h1.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Equal(ips, []string{"127.0.0.1", "::1", "10.0.0.1"}) || !slices.Equal(h1.DNSNames, []string{"localhost", "h1.example"}) {
		t.Errorf("hostd SANs %v %v", h1.DNSNames, ips)
	}
	if role, name, err := RoleOf(h1); err != nil || role != RoleHostd || name != "h1" {
		t.Errorf("RoleOf(hostd-h1) = %s, %s, %v", role, name, err)
	}

	op := readCert(t, filepath.Join(f.dir, "client-op.crt"))
	if !slices.Equal(op.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || len(op.DNSNames)+len(op.IPAddresses) != 0 {
		t.Errorf("client: ExtKeyUsage %v SANs %v %v", op.ExtKeyUsage, op.DNSNames, op.IPAddresses)
	}
	if role, name, err := RoleOf(op); err != nil || role != RoleClient || name != "op" {
		t.Errorf("RoleOf(client-op) = %s, %s, %v", role, name, err)
	}

	// Renewal replaces the pair in place, keeping the modes.
	before := readCert(t, filepath.Join(f.dir, "client-op.crt"))
	mustIssue(t, f.dir, RoleClient, "op", nil)
	after := readCert(t, filepath.Join(f.dir, "client-op.crt"))
	if before.SerialNumber.Cmp(after.SerialNumber) == 0 {
		t.Error("re-issue kept the old certificate")
	}
	if m := mode(t, filepath.Join(f.dir, "client-op.key")); m != 0o600 {
		t.Errorf("re-issued key mode %o", m)
	}
}

func TestInitRefusesOverwrite(t *testing.T) {
	f := newFixture(t)
	old, _ := os.ReadFile(f.ca)
	err := Init(f.dir, InitOptions{})
	if !errors.Is(err, ErrCAExists) || !strings.Contains(err.Error(), "ca.crt") {
		t.Fatalf("Init over a CA: %v, want ErrCAExists naming ca.crt", err)
	}
	if now, _ := os.ReadFile(f.ca); !bytes.Equal(old, now) {
		t.Fatal("refused Init changed ca.crt")
	}
	// Only the key left (a crash after writing it): still refused.
	keyOnly := t.TempDir()
	if err := os.WriteFile(filepath.Join(keyOnly, CAKeyFile), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Init(keyOnly, InitOptions{}); !errors.Is(err, ErrCAExists) {
		t.Fatalf("Init over a CA key: %v, want ErrCAExists", err)
	}

	if err := Init(f.dir, InitOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.ReadFile(f.ca); bytes.Equal(old, now) {
		t.Fatal("forced Init kept the old CA")
	}
	if m := mode(t, filepath.Join(f.dir, CAKeyFile)); m != 0o600 {
		t.Errorf("replaced CA key mode %o", m)
	}
	// Certificates of the old CA are no longer trusted.
	cert, key := f.paths(RoleCoord, "c1")
	if _, err := ServerConfig(cert, key, f.ca, RoleCoord); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("old certificate against the new CA: %v", err)
	}
}

func TestIssueErrors(t *testing.T) {
	empty := t.TempDir()
	if _, _, err := Issue(empty, RoleCoord, "c1", nil, time.Hour); !errors.Is(err, ErrNoCA) {
		t.Errorf("Issue without a CA: %v, want ErrNoCA", err)
	}
	if _, err := ServerConfig("x.crt", "x.key", filepath.Join(empty, CACertFile), RoleCoord); !errors.Is(err, ErrNoCA) {
		t.Errorf("ServerConfig without a CA: %v, want ErrNoCA", err)
	}
	f := newFixture(t)
	for _, tc := range []struct {
		role     Role
		name     string
		hosts    []string
		validity time.Duration
		want     string
	}{
		{"admin", "x", nil, time.Hour, "unknown role"},
		{RoleHostd, "", nil, time.Hour, "empty name"},
		{RoleHostd, "../evil", nil, time.Hour, "want letters"},
		{RoleHostd, "a/b", nil, time.Hour, "want letters"},
		{RoleClient, "op", []string{"h"}, time.Hour, "takes no hosts"},
		{RoleHostd, "h", []string{"h1:8443"}, time.Hour, "no port"},
		{RoleHostd, "h", []string{"https://h1"}, time.Hour, "no port"},
		{RoleHostd, "h", []string{"*.example"}, time.Hour, "no wildcard"},
		{RoleHostd, "h", nil, 0, "positive"},
		{RoleHostd, "h", nil, 20 * 365 * 24 * time.Hour, "outlasts the CA"},
	} {
		_, _, err := Issue(f.dir, tc.role, tc.name, tc.hosts, tc.validity)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Issue(%s, %q, %q, %s): %v, want %q", tc.role, tc.name, tc.hosts, tc.validity, err, tc.want)
		}
	}
	// A client certificate cannot serve, and cannot be expected of a server.
	cert, key := f.paths(RoleClient, "op")
	if _, err := ServerConfig(cert, key, f.ca, RoleCoord); !errors.Is(err, ErrRole) {
		t.Errorf("ServerConfig with a client certificate: %v, want ErrRole", err)
	}
	if _, err := ClientConfig(cert, key, f.ca, RoleClient); err == nil {
		t.Error("ClientConfig expecting a client-role server: no error")
	}
	if _, err := ServerConfig(cert, key, f.ca); err == nil {
		t.Error("ServerConfig allowing no role: no error")
	}
	// Our own certificate from another CA is caught at configuration time.
	other, otherKey := CertPaths(f.otherDir, RoleCoord, "c1")
	if _, err := ClientConfig(other, otherKey, f.ca, RoleCoord); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("ClientConfig with a foreign certificate: %v", err)
	}
}

// TestServerAllowsOnlyCoord is the coord-only server of the brief, over HTTPS.
func TestServerAllowsOnlyCoord(t *testing.T) {
	f := newFixture(t)
	srv, logs, calls := server(t, serverConfig(t, f, RoleHostd, "h1", RoleCoord))

	// coord: accepted, and the handler sees who it is.
	body, resp, err := get(httpClient(t, clientConfig(t, f, f.dir, RoleCoord, "c1", RoleHostd)), srv.URL)
	if err != nil {
		t.Fatalf("coord client: %v", err)
	}
	if resp.StatusCode != 200 || body != "coord/c1" {
		t.Fatalf("coord client: %d %q", resp.StatusCode, body)
	}
	// The client sees the server's role too.
	if role, name, ok := PeerRole(*resp.TLS); !ok || role != RoleHostd || name != "h1" {
		t.Errorf("client side PeerRole = %s, %s, %v", role, name, ok)
	}
	if resp.TLS.Version != tls.VersionTLS13 {
		t.Errorf("TLS version %x", resp.TLS.Version)
	}

	// hostd: refused by role, and the server's error names it.
	if _, _, err := get(httpClient(t, clientConfig(t, f, f.dir, RoleHostd, "h2", RoleHostd)), srv.URL); err == nil {
		t.Fatal("hostd client accepted by a coord-only server")
	}
	waitLog(t, logs, "client hostd/h2 refused", "want coord", ErrRole.Error())

	// the operator CLI: refused too.
	if _, _, err := get(httpClient(t, clientConfig(t, f, f.dir, RoleClient, "op", RoleHostd)), srv.URL); err == nil {
		t.Fatal("client-role client accepted by a coord-only server")
	}
	waitLog(t, logs, "client client/op refused")

	// coord/c1 from another CA: refused by the chain check.
	otherCert, otherKey := CertPaths(f.otherDir, RoleCoord, "c1")
	pair, err := tls.LoadX509KeyPair(otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, f.ca))
	// GetClientCertificate: crypto/tls would otherwise not even send a
	// certificate whose issuer the server does not list as acceptable.
	foreign := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }}
	if _, _, err := get(httpClient(t, foreign), srv.URL); err == nil {
		t.Fatal("client from another CA accepted")
	}
	waitLog(t, logs, "unknown authority")

	// TLS without a client certificate.
	if _, _, err := get(httpClient(t, &tls.Config{RootCAs: pool}), srv.URL); err == nil {
		t.Fatal("client without a certificate accepted")
	}
	waitLog(t, logs, "didn't provide a certificate")

	// TLS 1.2: refused.
	tls12 := clientConfig(t, f, f.dir, RoleCoord, "c1", RoleHostd)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, _, err := get(httpClient(t, tls12), srv.URL); err == nil {
		t.Fatal("TLS 1.2 client accepted")
	}

	// Plain HTTP: net/http answers 400 without reaching the handler.
	_, resp, err = get(&http.Client{Timeout: 10 * time.Second}, "http://"+srv.Listener.Addr().String())
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain HTTP: %v, want status 400", err)
	}

	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want once (for coord only)", n)
	}
}

// TestHandshakeErrors uses a bare tls.Listen server to check the errors
// both sides get: wrapped ErrRole, naming the peer.
func TestHandshakeErrors(t *testing.T) {
	f := newFixture(t)
	serve := func(cfg *tls.Config) (string, <-chan error) {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		errc := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			errc <- c.(*tls.Conn).Handshake()
		}()
		return ln.Addr().String(), errc
	}
	dial := func(addr string, cfg *tls.Config) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// In TLS 1.3 the client finishes first; a refusal by the server
		// arrives as an alert on the first read.
		_, err = c.Read(make([]byte, 1))
		return err
	}

	// Server refuses a hostd client.
	addr, errc := serve(serverConfig(t, f, RoleCoord, "c1", RoleCoord))
	if err := dial(addr, clientConfig(t, f, f.dir, RoleHostd, "h1", RoleCoord)); err == nil {
		t.Error("hostd client: no error")
	}
	if err := <-errc; !errors.Is(err, ErrRole) || !strings.Contains(err.Error(), "hostd/h1") {
		t.Errorf("server error %v: want ErrRole naming hostd/h1", err)
	}

	// Client refuses a server with the wrong role: coord expects hostd h1,
	// but a coord answers.
	addr, errc = serve(serverConfig(t, f, RoleCoord, "c1", RoleCoord, RoleHostd))
	err := dial(addr, clientConfig(t, f, f.dir, RoleHostd, "h2", RoleHostd))
	if !errors.Is(err, ErrRole) || !strings.Contains(err.Error(), "server coord/c1 refused") {
		t.Errorf("client error %v: want ErrRole naming coord/c1", err)
	}
	if err := <-errc; err == nil {
		t.Error("server: handshake with a refusing client succeeded")
	}

	// Server name verification by SAN: dialling 127.0.0.1 (an IP SAN) works,
	// ServerName h1.example works, a name not in the SANs does not.
	for _, tc := range []struct {
		serverName string
		ok         bool
	}{{"", true}, {"h1.example", true}, {"localhost", true}, {"h2.example", false}} {
		addr, errc = serve(serverConfig(t, f, RoleHostd, "h1", RoleHostd))
		cfg := clientConfig(t, f, f.dir, RoleHostd, "h2", RoleHostd)
		cfg.ServerName = tc.serverName
		c, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			if role, name, ok := PeerRole(c.ConnectionState()); !ok || role != RoleHostd || name != "h1" {
				t.Errorf("PeerRole = %s, %s, %v", role, name, ok)
			}
			c.Close()
		}
		if (err == nil) != tc.ok {
			t.Errorf("ServerName %q: %v, want ok=%v", tc.serverName, err, tc.ok)
		}
		<-errc
	}
}

// TestPeerRoleRoutes shows per-route authorisation as hostd would do it:
// coord may call everything, another hostd only the incoming-migration routes.
func TestPeerRoleRoutes(t *testing.T) {
	f := newFixture(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		role, name, ok := PeerRole(*r.TLS)
		switch {
		case !ok:
			http.Error(w, "no role", http.StatusForbidden)
		case role == RoleCoord, role == RoleHostd && strings.HasPrefix(r.URL.Path, "/incoming/"):
			fmt.Fprintf(w, "%s/%s", role, name)
		default:
			http.Error(w, string(role)+"/"+name+" may not call "+r.URL.Path, http.StatusForbidden)
		}
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = serverConfig(t, f, RoleHostd, "h1", RoleCoord, RoleHostd)
	srv.StartTLS()
	defer srv.Close()

	coord := httpClient(t, clientConfig(t, f, f.dir, RoleCoord, "c1", RoleHostd))
	peer := httpClient(t, clientConfig(t, f, f.dir, RoleHostd, "h2", RoleHostd))
	for _, tc := range []struct {
		c      *http.Client
		path   string
		status int
		body   string
	}{
		{coord, "/vms", 200, "coord/c1"},
		{coord, "/incoming/vm1", 200, "coord/c1"},
		{peer, "/incoming/vm1", 200, "hostd/h2"},
		{peer, "/vms", 403, "hostd/h2 may not call /vms\n"},
	} {
		body, resp, err := get(tc.c, srv.URL+tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status || body != tc.body {
			t.Errorf("%s: %d %q, want %d %q", tc.path, resp.StatusCode, body, tc.status, tc.body)
		}
	}
	if _, _, ok := PeerRole(tls.ConnectionState{}); ok {
		t.Error("PeerRole of an unverified connection: ok")
	}
}

func TestExpired(t *testing.T) {
	f := newFixture(t)
	past := time.Now().Add(-48 * time.Hour)
	if _, _, err := issue(f.dir, RoleCoord, "old", nil, past, past.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := issue(f.dir, RoleHostd, "oldh", nil, past, past.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(readCert(t, f.ca))
	load := func(role Role, name string) tls.Certificate {
		pair, err := tls.LoadX509KeyPair(f.paths(role, name))
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}

	// Loading an expired certificate into a config fails up front.
	cert, key := f.paths(RoleCoord, "old")
	if _, err := ClientConfig(cert, key, f.ca, RoleHostd); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ClientConfig with an expired certificate: %v", err)
	}
	cert, key = f.paths(RoleHostd, "oldh")
	if _, err := ServerConfig(cert, key, f.ca, RoleCoord); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ServerConfig with an expired certificate: %v", err)
	}

	// On the wire, the server refuses an expired client certificate...
	srv, logs, _ := server(t, serverConfig(t, f, RoleHostd, "h1", RoleCoord))
	expiredClient := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{load(RoleCoord, "old")}}
	if _, _, err := get(httpClient(t, expiredClient), srv.URL); err == nil {
		t.Fatal("expired client certificate accepted")
	}
	waitLog(t, logs, "expired")

	// ...and the client refuses an expired server certificate.
	srv2 := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv2.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{load(RoleHostd, "oldh")}}
	srv2.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv2.StartTLS()
	defer srv2.Close()
	if _, _, err := get(httpClient(t, clientConfig(t, f, f.dir, RoleCoord, "c1", RoleHostd)), srv2.URL); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired server certificate: %v", err)
	}
}

// TestRoleOfRejectsAmbiguous signs, with the real CA, certificates whose role
// records are missing or disagree: RoleOf, and so the TLS configs, refuse them.
func TestRoleOfRejectsAmbiguous(t *testing.T) {
	f := newFixture(t)
	caCert, caKey, err := loadCA(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(ous []string, uris ...string) *x509.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		serial, _ := randomSerial()
		tmpl := &x509.Certificate{
			SerialNumber: serial,
			Subject:      pkix.Name{CommonName: "x", OrganizationalUnit: ous},
			NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		for _, u := range uris {
			pu, _ := url.Parse(u)
			tmpl.URIs = append(tmpl.URIs, pu)
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	for _, c := range []*x509.Certificate{
		sign(nil),
		sign([]string{"symvirt-coord"}),
		sign(nil, "symvirt://coord/x"),
		sign([]string{"symvirt-hostd"}, "symvirt://coord/x"),
		sign([]string{"symvirt-coord", "symvirt-hostd"}, "symvirt://coord/x"),
		sign([]string{"symvirt-coord"}, "symvirt://coord/x", "symvirt://hostd/x"),
		sign([]string{"symvirt-coord"}, "symvirt://coord/y"),
		sign([]string{"symvirt-admin"}, "symvirt://admin/x"),
	} {
		if role, name, err := RoleOf(c); !errors.Is(err, ErrRole) {
			t.Errorf("RoleOf(OU %v URIs %v) = %s, %s, %v: want ErrRole", c.Subject.OrganizationalUnit, c.URIs, role, name, err)
		}
		if _, _, ok := PeerRole(tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c, caCert}}}); ok {
			t.Errorf("PeerRole(OU %v URIs %v): ok", c.Subject.OrganizationalUnit, c.URIs)
		}
	}
	if role, name, err := RoleOf(sign([]string{"symvirt-coord", "ops"}, "symvirt://coord/x", "https://example.com")); err != nil || role != RoleCoord || name != "x" {
		t.Errorf("RoleOf with unrelated OU/URI = %s, %s, %v", role, name, err)
	}
}

package metricsrv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
)

func TestCheckPlainOnlyOnLoopback(t *testing.T) {
	for _, c := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{Config{Address: "127.0.0.1:9464"}, true},
		{Config{Address: "127.0.0.2:9464"}, true},
		{Config{Address: "[::1]:9464"}, true},
		{Config{Address: "localhost:9464"}, true},
		{Config{Address: "0.0.0.0:9464"}, false},
		{Config{Address: ":9464"}, false},
		{Config{Address: "[::]:9464"}, false},
		{Config{Address: "10.0.0.1:9464"}, false},
		{Config{Address: "node1.example:9464"}, false},
		{Config{Address: "10.0.0.1:9464", TLSCert: "x.crt"}, true},
		{Config{Address: ":9464", TLSCert: "x.crt"}, true},
	} {
		err := c.cfg.Check()
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrPlainNotLoopback)) {
			t.Errorf("Check(%+v) = %v, want ok=%v (or ErrPlainNotLoopback)", c.cfg, err, c.ok)
		}
	}
	if err := (Config{Address: "9464"}).Check(); err == nil {
		t.Error("Check of an address without a port passed")
	}
}

// serve starts a metrics address whose handler answers "metric 1".
func serve(t *testing.T, cfg Config) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "metric 1\n") })
	addr, err := Serve(ctx, slog.New(slog.DiscardHandler), cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	return addr.String()
}

func get(c *http.Client, method, url string) (int, string, error) {
	req, _ := http.NewRequest(method, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

func TestPlainServesOnlyMetrics(t *testing.T) {
	addr := serve(t, Config{Address: "127.0.0.1:0"})
	c := &http.Client{Timeout: 5 * time.Second}
	for _, x := range []struct {
		method, path string
		code         int
	}{{"GET", "/metrics", 200}, {"POST", "/metrics", 405}, {"GET", "/v1/vms", 404}, {"POST", "/v1/steps", 404}} {
		code, body, err := get(c, x.method, "http://"+addr+x.path)
		if err != nil || code != x.code || (code == 200 && body != "metric 1\n") {
			t.Errorf("%s %s = %d %q %v, want %d", x.method, x.path, code, body, err, x.code)
		}
	}
}

func TestServeRefusesPlainNotLoopback(t *testing.T) {
	_, err := Serve(context.Background(), slog.New(slog.DiscardHandler), Config{Address: "0.0.0.0:0"}, http.NotFoundHandler())
	if !errors.Is(err, ErrPlainNotLoopback) {
		t.Fatalf("Serve on 0.0.0.0 without TLS = %v, want ErrPlainNotLoopback", err)
	}
}

// With the daemon's certificate, only a monitor certificate gets in: the
// operator's, a hostd's and the coordinator's are refused at the handshake.
func TestTLSTakesOnlyMonitorCertificates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := pki.Init(dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	issue := func(role pki.Role, name string) (string, string) {
		crt, key, err := pki.Issue(dir, role, name, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return crt, key
	}
	ca := filepath.Join(dir, pki.CACertFile)
	crt, key := issue(pki.RoleHostd, "h1")
	addr := serve(t, Config{Address: "127.0.0.1:0", TLSCert: crt, TLSKey: key, TLSCA: ca})
	client := func(role pki.Role, name string) *http.Client {
		crt, key := issue(role, name)
		cfg, err := pki.ClientConfig(crt, key, ca, pki.RoleHostd)
		if err != nil {
			t.Fatal(err)
		}
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	mon := client(pki.RoleMonitor, "prom")
	if code, body, err := get(mon, "GET", "https://"+addr+"/metrics"); err != nil || code != 200 || body != "metric 1\n" {
		t.Fatalf("monitor GET /metrics = %d %q %v", code, body, err)
	}
	if code, _, err := get(mon, "POST", "https://"+addr+"/v1/steps"); err != nil || code != 404 {
		t.Errorf("monitor POST /v1/steps on the metrics address = %d %v, want 404", code, err)
	}
	for _, role := range []pki.Role{pki.RoleClient, pki.RoleCoord, pki.RoleHostd} {
		_, _, err := get(client(role, "x"+string(role)), "GET", "https://"+addr+"/metrics")
		if err == nil {
			t.Errorf("a %s certificate read the metrics", role)
		}
	}
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if _, _, err := get(anon, "GET", "https://"+addr+"/metrics"); err == nil || !strings.Contains(fmt.Sprint(err), "certificate") {
		t.Errorf("GET /metrics without a client certificate = %v, want a certificate error", err)
	}
}

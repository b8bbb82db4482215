package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testenv"
)

// loopbackAddr is a free 127.0.0.1 port.
func loopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrape GETs a metrics URL and returns the body; an error is the
// request's (a refused handshake) or a status other than 200.
func scrape(c *http.Client, method, url string) (string, int, error) {
	req, _ := http.NewRequest(method, url, strings.NewReader("{}"))
	resp, err := c.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), resp.StatusCode, err
}

type testPKI struct{ dir, ca string }

func newTestPKI(t *testing.T) testPKI {
	p := testPKI{dir: filepath.Join(t.TempDir(), "pki")}
	p.ca = filepath.Join(p.dir, pki.CACertFile)
	if err := pki.Init(p.dir, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p testPKI) issue(t *testing.T, role pki.Role, name string) (string, string) {
	crt, key, err := pki.Issue(p.dir, role, name, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return crt, key
}

// client is an HTTPS client holding role/name's certificate that expects a
// server of role server.
func (p testPKI) client(t *testing.T, role pki.Role, name string, server pki.Role) *http.Client {
	crt, key := p.issue(t, role, name)
	cfg, err := pki.ClientConfig(crt, key, p.ca, server)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

var plainHTTP = &http.Client{Timeout: 10 * time.Second}

// Without certificates, both daemons serve their metrics in the clear on
// a loopback metrics address, read at scrape time (a host added shows at
// the next scrape), and nothing else there.
func TestMetricsAddressPlainLoopback(t *testing.T) {
	testenv.RequireRoot(t)
	hm, cm := loopbackAddr(t), loopbackAddr(t)
	h := testenv.StartHostd(t, "a", nil, "", "metrics_address: "+hm+"\n")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil, "--metrics-address", cm)

	body, code, err := scrape(plainHTTP, "GET", "http://"+hm+"/metrics")
	if err != nil || code != 200 || !strings.Contains(body, "symvirt_hostd_live_snapshot_pause_seconds_count 0") {
		t.Fatalf("hostd metrics: %d %v\n%.2000s", code, err, body)
	}
	if _, code, err := scrape(plainHTTP, "POST", "http://"+hm+"/v1/steps"); err != nil || code != 404 {
		t.Errorf("POST /v1/steps on hostd's metrics address: %d %v, want 404", code, err)
	}
	body, code, err = scrape(plainHTTP, "GET", "http://"+cm+"/metrics")
	if err != nil || code != 200 || !strings.Contains(body, "symvirt_coord_hosts 0\n") {
		t.Fatalf("coord metrics: %d %v\n%.2000s", code, err, body)
	}
	if out, err := c.CLI(t, "hosts", "add", "a", h.Socket()); err != nil {
		t.Fatalf("hosts add: %v: %s", err, out)
	}
	body, _, _ = scrape(plainHTTP, "GET", "http://"+cm+"/metrics")
	if !strings.Contains(body, "symvirt_coord_hosts 1\n") {
		t.Errorf("coord metrics after hosts add: no symvirt_coord_hosts 1\n%.2000s", body)
	}
	if _, code, err := scrape(plainHTTP, "GET", "http://"+cm+"/v1/hosts"); err != nil || code != 404 {
		t.Errorf("GET /v1/hosts on coord's metrics address: %d %v, want 404", code, err)
	}
}

// With their certificates, the daemons' metrics addresses are TLS and take a
// monitor certificate, which reads /metrics and nothing else: the same
// certificate presented to hostd's API (a step) and to the coordinator's
// API is refused, where the coordinator's and the operator's get through.
func TestMetricsAddressMonitorCertificate(t *testing.T) {
	testenv.RequireRoot(t)
	p := newTestPKI(t)
	hcrt, hkey := p.issue(t, pki.RoleHostd, "h1")
	ccrt, ckey := p.issue(t, pki.RoleCoord, "c1")
	hm, cm, hapi, capi := loopbackAddr(t), loopbackAddr(t), loopbackAddr(t), loopbackAddr(t)
	testenv.StartHostd(t, "h1", nil, hapi, "metrics_address: "+hm+"\n",
		"--tls-cert", hcrt, "--tls-key", hkey, "--tls-ca", p.ca)
	testenv.StartCoord(t, nil, t.TempDir(), nil, "--metrics-address", cm, "--listen", capi,
		"--tls-cert", ccrt, "--tls-key", ckey, "--tls-ca", p.ca)

	monH := p.client(t, pki.RoleMonitor, "prom", pki.RoleHostd)
	monC := p.client(t, pki.RoleMonitor, "prom", pki.RoleCoord)
	if body, code, err := scrape(monH, "GET", "https://"+hm+"/metrics"); err != nil || code != 200 ||
		!strings.Contains(body, "symvirt_hostd_live_snapshot_pause_seconds_count") {
		t.Errorf("monitor on hostd's metrics address: %d %v\n%.1000s", code, err, body)
	}
	if body, code, err := scrape(monC, "GET", "https://"+cm+"/metrics"); err != nil || code != 200 ||
		!strings.Contains(body, "symvirt_coord_hosts 0") {
		t.Errorf("monitor on coord's metrics address: %d %v\n%.1000s", code, err, body)
	}
	if body, code, _ := scrape(plainHTTP, "GET", "http://"+hm+"/metrics"); code == 200 || strings.Contains(body, "symvirt_") {
		t.Errorf("plain HTTP read hostd's TLS metrics address: %d %.200s", code, body)
	}
	for _, x := range []struct {
		who    string
		c      *http.Client
		method string
		url    string
	}{
		{"monitor on hostd's API", monH, "POST", "https://" + hapi + "/v1/steps"},
		{"monitor on hostd's API", monH, "GET", "https://" + hapi + "/metrics"},
		{"monitor on coord's API", monC, "GET", "https://" + capi + "/v1/hosts"},
		{"monitor on coord's API", monC, "POST", "https://" + capi + "/v1/jobs/j/checkpoint"},
		{"coord certificate on hostd's metrics address", p.client(t, pki.RoleCoord, "c2", pki.RoleHostd), "GET", "https://" + hm + "/metrics"},
		{"operator certificate on coord's metrics address", p.client(t, pki.RoleClient, "op", pki.RoleCoord), "GET", "https://" + cm + "/metrics"},
	} {
		body, code, err := scrape(x.c, x.method, x.url)
		if err == nil {
			t.Errorf("%s: %s %s answered %d %.200s, want a refused handshake", x.who, x.method, x.url, code, body)
		} else {
			t.Logf("%s: %s %s: %v", x.who, x.method, x.url, err)
		}
	}
	// The same routes with the certificates they are for get through:
	// the refusals above are the role's.
	coordOnHostd := p.client(t, pki.RoleCoord, "c3", pki.RoleHostd)
	if _, code, err := scrape(coordOnHostd, "POST", "https://"+hapi+"/v1/steps"); err != nil || code == 401 || code == 403 {
		t.Errorf("coord certificate POST /v1/steps on hostd: %d %v", code, err)
	}
	op := p.client(t, pki.RoleClient, "op2", pki.RoleCoord)
	if body, code, err := scrape(op, "GET", "https://"+capi+"/v1/hosts"); err != nil || code != 200 {
		t.Errorf("operator certificate GET /v1/hosts on coord: %d %v %s", code, err, body)
	}
	// And the CLI, as an operator would misuse it with a monitor certificate.
	mcrt, mkey := p.issue(t, pki.RoleMonitor, "prom2")
	out, err := exec.Command(testenv.Binary(t), "hosts", "--coord", capi,
		"--tls-cert", mcrt, "--tls-key", mkey, "--tls-ca", p.ca).CombinedOutput()
	if err == nil {
		t.Errorf("symvirt hosts with a monitor certificate succeeded: %s", out)
	}
}

// A metrics address that is not loopback is refused at start without the
// daemon's certificate: both daemons exit with the reason.
func TestMetricsAddressPlainNotLoopbackRefused(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Binary(t)
	cfg := filepath.Join(t.TempDir(), "host.yaml")
	if err := os.WriteFile(cfg, []byte("metrics_address: 0.0.0.0:19464\n"+testenv.PolicyYAML(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"hostd": {"hostd", "--state-dir", t.TempDir(), "--config", cfg},
		"coord": {"coord", "--state-dir", t.TempDir(), "--checkpoint-dir", t.TempDir(), "--metrics-address", ":19464"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil || timedOut || !strings.Contains(string(out), "plain HTTP metrics only on a loopback address") {
			t.Errorf("%s with a plain metrics address on all interfaces: %v\n%s", name, err, out)
		}
	}
}

package hostd_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// A hostd asked to serve its API on a routable address without TLS refuses
// to start (anyone reaching it would be root: POST /v1/host/restart runs
// any binary); with --insecure it starts, warns loudly and says so in GET
// /v1/host, where the control call shows the API is indeed open to anyone.
func TestListenWithoutTLSRefused(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Binary(t)
	a := testenv.NewNetNS(t, "la")
	b := testenv.NewNetNS(t, "lb")
	testenv.Link(t, a, b, "10.77.5.1/24", "10.77.5.2/24")

	state := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, bin, "hostd", "--state-dir", state,
		"--listen", "10.77.5.1:7070").CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("hostd --listen 10.77.5.1:7070 without TLS: err %v (ctx %v), want a refusal\n%s", err, ctx.Err(), out)
	}
	if !strings.Contains(string(out), "--listen 10.77.5.1:7070 without --tls-cert") ||
		!strings.Contains(string(out), "--insecure") {
		t.Fatalf("the refusal does not say what is wrong and how to fix it:\n%s", out)
	}
	if _, err := os.Stat(hostd.Layout{StateDir: state}.Socket()); err == nil {
		t.Fatalf("a refused hostd left its socket behind")
	}

	// testenv passes --insecure for a hostd listening without TLS.
	h := testenv.StartHostd(t, "insecure", a, "10.77.5.1:7071", "")
	if !strings.Contains(strings.Join(h.Daemon.Args(), " "), "--insecure") {
		t.Fatalf("testenv started %v", h.Daemon.Args())
	}
	if !strings.Contains(h.Logs(), "INSECURE") {
		t.Fatalf("no warning at start:\n%s", h.Logs())
	}
	// From the other namespace, with no credentials at all.
	resp, err := testenv.HTTPClientIn(b, nil).Get("http://10.77.5.1:7071/v1/host")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var host struct {
		Insecure bool `json:"insecure"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&host); err != nil || !host.Insecure {
		t.Fatalf("GET /v1/host on an insecure hostd: %+v %v, want insecure: true", host, err)
	}
}

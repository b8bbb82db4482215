package coord_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testenv"
)

// peerAPI calls a hostd's TCP API holding one host's real hostd
// certificate, from that host's namespace.
type peerAPI struct {
	t    *testing.T
	cl   *http.Client
	base string
}

func (c *cluster) peerAPI(from, to string) peerAPI {
	cert, key := pki.CertPaths(c.certs, pki.RoleHostd, from)
	cfg, err := pki.ClientConfig(cert, key, filepath.Join(c.certs, pki.CACertFile), pki.RoleHostd)
	if err != nil {
		c.t.Fatal(err)
	}
	return peerAPI{t: c.t, cl: testenv.HTTPClientIn(c.hosts[from].NS, cfg), base: "https://" + hostIP[to] + ":7070"}
}

func (p peerAPI) call(method, path string, body any) (int, string) {
	p.t.Helper()
	data, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, p.base+path, bytes.NewReader(data))
	resp, err := p.cl.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(out, &e) == nil && e.Error.Code != "" {
		return resp.StatusCode, e.Error.Code + ": " + e.Error.Message
	}
	return resp.StatusCode, string(out)
}

func (c *cluster) signer(role pki.Role, name string) *pki.Signer {
	s, err := pki.LoadSigner(pki.CertPaths(c.certs, role, name))
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

func (c *cluster) grant(s *pki.Signer, g hostd.MigrationGrant) *hostd.Grant {
	gr, err := hostd.SignGrant(s, g)
	if err != nil {
		c.t.Fatal(err)
	}
	return gr
}

// A peer holding host c's valid hostd certificate attacks host b: it
// hands b a VM without the coordinator's grant (none, one for another
// source, expired, tampered, signed by a hostd), and it aborts, finishes,
// deletes, stops and reads VMs b received from a or runs itself. All are
// refused and the VMs keep running; the coordinator-driven migration, and
// a hand-over the coordinator did grant to c (the control), work.
func TestPeerHostdCannotHijackMigrations(t *testing.T) {
	c := newCluster(t)
	c.createJob("jp", "a", "b") // vm1 on a, vm2 on b
	c.waitTraffic("jp", "a", []string{"10.79.0.12"}, map[string]int{})
	if res, out, err := c.op("migrate", "vm1", "--to", "b"); err != nil || res.Outcome != machine.OutcomeMigrated {
		t.Fatalf("coordinator-driven migrate vm1 --to b: %v\n%s", err, out)
	}
	if w := c.where("jp"); w["vm1"] != "b" {
		t.Fatalf("after migrate vm1 is on %s", w["vm1"])
	}

	evil := hostd.Spec{Name: "evil", Memory: 128, Kernel: c.kernel}
	coordKey, cKey := c.signer(pki.RoleCoord, "coord"), c.signer(pki.RoleHostd, "c")
	good := hostd.MigrationGrant{Op: "op-evil", VM: "evil", Source: "c", Dest: "b", Expires: time.Now().Add(time.Minute)}
	with := func(mod func(*hostd.MigrationGrant)) hostd.MigrationGrant { g := good; mod(&g); return g }
	tampered := c.grant(coordKey, with(func(g *hostd.MigrationGrant) { g.VM = "other" }))
	tampered.Payload = bytes.Replace(tampered.Payload, []byte(`"other"`), []byte(`"evil"`), 1)
	fromC := c.peerAPI("c", "b")
	for _, tc := range []struct {
		name  string
		grant *hostd.Grant
		want  string
	}{
		{"no grant", nil, "no migration grant"},
		{"grant for source a", c.grant(coordKey, with(func(g *hostd.MigrationGrant) { g.Source = "a" })), `source "a"`},
		{"expired grant", c.grant(coordKey, with(func(g *hostd.MigrationGrant) { g.Expires = time.Now().Add(-time.Minute) })), "expired"},
		{"tampered grant", tampered, "does not match"},
		{"grant signed by a hostd", c.grant(cKey, good), "may not sign"},
	} {
		code, body := fromC.call("POST", "/v1/incoming", hostd.IncomingRequest{Spec: evil, Op: "op-evil", Grant: tc.grant})
		if code != 403 || !strings.HasPrefix(body, "unauthorized: ") || !strings.Contains(body, "hostd/c may not hand over") ||
			!strings.Contains(body, tc.want) {
			t.Errorf("%s: POST /v1/incoming: %d %s; want 403 unauthorized saying %q", tc.name, code, body, tc.want)
		}
		if _, err := c.hosts["b"].Client().Status(ctxT(t, 10*time.Second), "evil"); !errors.Is(err, hostd.ErrNotFound) {
			t.Fatalf("%s: b has vm evil after a refused hand-over: %v", tc.name, err)
		}
	}

	fromA := c.peerAPI("a", "b")
	peersCannotTouch(t, c, fromC, fromA)

	// Control: the same call with the coordinator's grant for exactly this
	// hand-over is accepted, and then c (its source) may abort it.
	code, body := fromC.call("POST", "/v1/incoming", hostd.IncomingRequest{Spec: evil, Op: "op-evil", Grant: c.grant(coordKey, good)})
	if code != 200 || !strings.Contains(body, `"uri"`) {
		t.Fatalf("a granted hand-over: %d %s", code, body)
	}
	if code, body := fromC.call("GET", "/v1/vms/evil", nil); code != 200 {
		t.Errorf("hostd/c reading the vm it handed over: %d %s", code, body)
	}
	if code, body := fromA.call("POST", "/v1/vms/evil/incoming/abort", struct{}{}); code != 403 {
		t.Errorf("hostd/a aborting c's hand-over: %d %s; want 403", code, body)
	}
	if code, body := fromC.call("POST", "/v1/vms/evil/incoming/abort", struct{}{}); code != 200 {
		t.Fatalf("hostd/c aborting its own hand-over: %d %s", code, body)
	}
	if _, err := c.hosts["b"].Client().Status(ctxT(t, 10*time.Second), "evil"); !errors.Is(err, hostd.ErrNotFound) {
		t.Fatalf("vm evil after its source aborted it: %v", err)
	}
}

// peersCannotTouch: c touches a VM b received from a (vm1) and one b runs
// (vm2); a, vm1's real source, may read it but not abort it. Both run on.
func peersCannotTouch(t *testing.T, c *cluster, fromC, fromA peerAPI) {
	for _, vm := range []string{"vm1", "vm2"} {
		for _, call := range [][2]string{{"POST", "/incoming/abort"}, {"POST", "/incoming/finish"},
			{"DELETE", ""}, {"GET", ""}, {"POST", "/stop"}} {
			code, body := fromC.call(call[0], "/v1/vms/"+vm+call[1], struct{}{})
			if code != 403 || !strings.HasPrefix(body, "unauthorized: ") || !strings.Contains(body, "hostd/c may not") {
				t.Errorf("hostd/c %s /v1/vms/%s%s: %d %s; want 403 unauthorized", call[0], vm, call[1], code, body)
			}
		}
	}
	if code, body := fromA.call("GET", "/v1/vms/vm1", nil); code != 200 {
		t.Errorf("hostd/a reading the vm it handed over: %d %s", code, body)
	}
	if code, body := fromA.call("POST", "/v1/vms/vm1/incoming/abort", struct{}{}); code != 409 {
		t.Errorf("hostd/a aborting the vm it handed over, now running: %d %s; want 409 invalid_state", code, body)
	}
	if code, body := fromA.call("GET", "/v1/vms/vm2", nil); code != 403 {
		t.Errorf("hostd/a reading b's own vm2: %d %s; want 403", code, body)
	}
	for _, vm := range []string{"vm1", "vm2"} {
		st, err := c.hosts["b"].Client().Status(ctxT(t, 10*time.Second), vm)
		if err != nil || st.State != "running" {
			t.Fatalf("%s on b after the attacks: %+v %v", vm, st, err)
		}
	}
	c.waitTraffic("jp", "b", []string{"10.79.0.12"}, c.traffic("b"))
}

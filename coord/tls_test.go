package coord_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testenv"
)

// hostds accept operations only from the coordinator's certificate;
// another hostd may only reach the incoming-migration routes (and read
// status); anyone else is refused at the handshake.
func TestHostdMutualTLS(t *testing.T) {
	c := newCluster(t)
	base := "https://" + hostIP["a"] + ":7070"
	ca := filepath.Join(c.certs, "ca.crt")
	as := func(role, name string) *http.Client {
		var cfg *tls.Config
		if role != "" {
			var err error
			cfg, err = pki.ClientConfig(filepath.Join(c.certs, role+"-"+name+".crt"), filepath.Join(c.certs, role+"-"+name+".key"), ca, pki.RoleHostd)
			if err != nil {
				t.Fatal(err)
			}
		} else {
			cfg = &tls.Config{InsecureSkipVerify: true} // no client certificate at all
		}
		return testenv.HTTPClientIn(c.hosts["b"].NS, cfg)
	}
	call := func(cl *http.Client, method, path string) (int, string, error) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader("{}"))
		resp, err := cl.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	if code, body, err := call(as("coord", "coord"), "GET", "/v1/vms"); err != nil || code != 200 {
		t.Errorf("coordinator: %d %s %v", code, body, err)
	}
	if _, _, err := call(as("client", "admin"), "GET", "/v1/vms"); err == nil {
		t.Errorf("an operator's client certificate may drive a hostd directly")
	}
	if _, _, err := call(as("", ""), "GET", "/v1/vms"); err == nil {
		t.Errorf("a caller without a certificate was let in")
	}
	peer := as("hostd", "b")
	if code, body, err := call(peer, "GET", "/v1/vms/nope"); err != nil || code != 404 {
		t.Errorf("a peer hostd reading a vm's status: %d %s %v", code, body, err)
	}
	if code, body, err := call(peer, "POST", "/v1/vms/nope/stop"); err != nil || code != 403 || !strings.Contains(body, "may not call") {
		t.Errorf("a peer hostd stopping vms: %d %s %v", code, body, err)
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// A guest that never gets ready (its VM has a guest channel but no guest
// agent runs) refuses every operation: the job checkpoint rolls back and
// exits 4 with code "guest_refused", the result on stdout saying aborted;
// a VM checkpoint through hostd exits 4 with code "guest"; the VM runs on.
// With --no-guest the same VM checkpoints (exit 0), the control.
func TestCLIGuestRefusalExits4(t *testing.T) {
	kernel, initrd := testguest.Paths(t)
	h := testenv.StartHostd(t, "a", nil, "", "", "--guest-timeout", "3s")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil)
	env := []string{"SYMVIRT_COORD=" + c.Socket(), "SYMVIRT_HOST=" + h.Socket()}
	job := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(job, []byte(fmt.Sprintf(`name: j1
vms:
  - name: vm1
    host: a
    spec: {memory: 128M, vcpus: 1, kernel: %s, initrd: %s, append: console=ttyS0, guest_channel: {type: virtio-serial}}
`, kernel, initrd)), 0o600)
	for _, args := range [][]string{{"hosts", "add", "a", h.Socket()}, {"jobs", "create", "-f", job}} {
		if r := symvirt(t, env, args...); r.exit != 0 {
			t.Fatalf("%s", r)
		}
	}

	r := symvirt(t, env, "checkpoint", "j1")
	t.Logf("%s", r)
	if r.exit != exitGuest || !strings.Contains(r.stdout, "checkpoint of job j1: aborted") ||
		!strings.Contains(r.stderr, "a guest did not get ready") {
		t.Errorf("job checkpoint of a guest that never gets ready: want exit 4, aborted:\n%s", r)
	}
	r = symvirt(t, env, "checkpoint", "j1", "-o", "json")
	var res struct{ Outcome string }
	json.Unmarshal([]byte(r.stdout), &res)
	if code, _ := jsonError(t, r); code != "guest_refused" || r.exit != exitGuest || res.Outcome != "aborted" {
		t.Errorf("-o json: code %q exit %d outcome %q, want guest_refused, 4, aborted:\n%s", code, r.exit, res.Outcome, r)
	}

	r = symvirt(t, env, "vm", "checkpoint", "vm1", "--dir", filepath.Join(t.TempDir(), "ck"), "-o", "json")
	t.Logf("%s", r)
	if code, _ := jsonError(t, r); code != "guest" || r.exit != exitGuest || r.stdout != "" {
		t.Errorf("vm checkpoint: code %q exit %d, want guest, 4, nothing on stdout:\n%s", code, r.exit, r)
	}
	if r := symvirt(t, env, "vm", "status", "vm1"); r.exit != 0 || !strings.Contains(r.stdout, "vm1: running") {
		t.Errorf("the VM does not run on:\n%s", r)
	}
	r = symvirt(t, env, "vm", "checkpoint", "vm1", "--dir", filepath.Join(t.TempDir(), "ck"), "--no-guest")
	if r.exit != 0 || !strings.Contains(r.stdout, "checkpoint ") {
		t.Errorf("control: --no-guest checkpoint:\n%s", r)
	}
}

package coord_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// plainJob is a job of plain VMs (no guest agent, no NIC): vmI on
// hosts[I-1].
func plainJob(t *testing.T, name string, hosts ...string) string {
	kernel, initrd := testguest.Paths(t)
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nvms:\n", name)
	for i, h := range hosts {
		fmt.Fprintf(&b, "  - name: %s-vm%d\n    host: %s\n    spec: {memory: 128M, vcpus: 1, kernel: %s, initrd: %s, append: \"console=ttyS0 quiet\"}\n",
			name, i+1, h, kernel, initrd)
	}
	f := filepath.Join(t.TempDir(), name+".yaml")
	os.WriteFile(f, []byte(b.String()), 0o600)
	return f
}

// evacuate runs symvirt evacuate -o json and decodes its results.
func (c *cluster) evacuate(list string) ([]machine.Result, string, error) {
	out, err := c.coord.CLI(c.t, "evacuate", list, "--output", "json")
	var res []machine.Result
	if i := strings.Index(out, "["); i >= 0 {
		json.NewDecoder(strings.NewReader(out[i:])).Decode(&res)
	}
	return res, out, err
}

// `symvirt evacuate a,b` (a hostlist of two hosts, each running a VM of one
// job) moves the job to c, the one host left, and cordons a and b: a job
// created on a, and a migration to b, are refused with an error naming the
// cordon (exit 2); `symvirt hosts` shows them cordoned; once b is
// uncordoned the migration to it goes through.
func TestEvacuateHostlistCordons(t *testing.T) {
	c := newCluster(t)
	c.cli("jobs", "create", "-f", plainJob(t, "je", "a", "b"))
	res, out, err := c.evacuate("a,b")
	t.Logf("evacuate a,b:\n%s", out)
	if err != nil || len(res) != 1 || res[0].Outcome != machine.OutcomeMigrated {
		t.Fatalf("evacuate a,b: %v\n%s", err, out)
	}
	for _, v := range res[0].VMs {
		if v.Host != "c" {
			t.Errorf("vm %s evacuated to %s, want c", v.Name, v.Host)
		}
	}
	hosts := c.cli("hosts")
	for _, h := range []string{"a", "b"} {
		if !strings.Contains(hosts, h+"\t"+hostIP[h]+":7070\tcordoned since ") {
			t.Errorf("hosts: %s not shown cordoned:\n%s", h, hosts)
		}
	}
	if strings.Contains(hosts, hostIP["c"]+":7070\tcordoned") {
		t.Errorf("hosts: c shown cordoned:\n%s", hosts)
	}
	var infos []coord.HostInfo
	json.Unmarshal([]byte(c.cli("hosts", "-o", "json")), &infos)
	if len(infos) != 3 || infos[0].Cordoned == nil || infos[0].Cordoned.Reason != "evacuated" || infos[2].Cordoned != nil {
		t.Errorf("hosts -o json: %+v", infos)
	}

	refused := func(args ...string) {
		t.Helper()
		out, err := c.coord.CLI(t, args...)
		if code := exitCode(err); code != 2 || !strings.Contains(out, "is cordoned") || !strings.Contains(out, "symvirt hosts uncordon") {
			t.Errorf("symvirt %s on a cordoned host: exit %d, want 2 and the cordon named:\n%s", strings.Join(args, " "), code, out)
		}
	}
	refused("jobs", "create", "-f", plainJob(t, "jn", "a"))
	refused("migrate", "je-vm1", "--to", "b")
	c.cli("hosts", "uncordon", "b")
	if res, out, err := c.op("migrate", "je-vm1", "--to", "b"); err != nil || res.Outcome != machine.OutcomeMigrated {
		t.Fatalf("migrate to b once uncordoned: %v\n%s", err, out)
	}
	if w := c.where("je"); w["je-vm1"] != "b" {
		t.Errorf("after the migration: %v", w)
	}
	c.cli("hosts", "cordon", "c", "--reason", "disk")
	refused("migrate", "je-vm1", "--to", "c")
}

// A host that is down (its hostd and its QEMUs killed) is evacuated in the
// same command: its job restarts from its last complete checkpoint on the
// hosts left (the job's VM on a running host is stopped and restored from
// the same cut), with the outcome per VM in the result.
func TestEvacuateDownHostRestartsFromCheckpoint(t *testing.T) {
	c := newCluster(t)
	c.cli("jobs", "create", "-f", plainJob(t, "jd", "a", "b"))
	res, out, err := c.op("checkpoint", "jd")
	if err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	ck := res.CheckpointID
	c.hosts["b"].Kill()
	testenv.KillUnder(c.hosts["b"].StateDir)

	rs, out, err := c.evacuate("b")
	t.Logf("evacuate b (down):\n%s", out)
	if err != nil || len(rs) != 1 {
		t.Fatalf("evacuate of a down host: %v\n%s", err, out)
	}
	r := rs[0]
	if r.Kind != machine.KindRestart || r.Outcome != machine.OutcomeRestored || r.CheckpointID != ck {
		t.Errorf("the job of the down host: %s %s from %s, want restart restored from %s", r.Kind, r.Outcome, r.CheckpointID, ck)
	}
	for _, v := range r.VMs {
		if v.Outcome != machine.OutcomeRestored || v.Host == "b" || v.Host == "" {
			t.Errorf("vm %s: %s on %q, want restored off b", v.Name, v.Outcome, v.Host)
		}
	}
	w := c.where("jd")
	for vm, h := range w {
		st, err := c.hosts[h].Client().Status(ctxT(t, 10*time.Second), vm)
		if err != nil || st.State != "running" {
			t.Errorf("vm %s on %s: %+v %v, want running", vm, h, st, err)
		}
	}
	text, _ := c.coord.CLI(t, "hosts")
	if !strings.Contains(text, "b\t"+hostIP["b"]+":7070\tcordoned since ") {
		t.Errorf("hosts: b not cordoned:\n%s", text)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

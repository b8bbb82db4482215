package coord_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// `symvirt template create` on two hosts, then `symvirt boot`: the
// coordinator spreads the clones over the hosts that have the template,
// each is ready with its time reported, and they form a job; hosts asked
// for that lack the template are refused before anything starts.
func TestBootClonesAcrossHosts(t *testing.T) {
	c, cli, a, b := bootSetup(t)
	cli("hosts", "add", "c", t.TempDir()+"/none.sock") // no template (no hostd either)
	if out := cli("template", "list", "--host", a.Socket()); !strings.Contains(out, "small") {
		t.Fatalf("template list:\n%s", out)
	}
	if out, err := c.CLI(t, "boot", "--template", "small", "--count", "2", "--hosts", "a,c", "--job", "bad"); err == nil ||
		!strings.Contains(out, `host "c"`) {
		t.Fatalf("boot on a host without the template: %v\n%s", err, out)
	}

	var res coord.BootResult
	if err := json.Unmarshal([]byte(cli("boot", "--template", "small", "--count", "4", "--job", "j", "-o", "json")), &res); err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, vm := range res.VMs {
		per[vm.Host]++
		t.Logf("%s on %s: ready in %s (%s after the boot started)", vm.Name, vm.Host, vm.Ready, vm.Since)
		if vm.Error != "" || vm.Ready <= 0 {
			t.Errorf("%s: %+v", vm.Name, vm)
		}
	}
	if res.Ready != 4 || per["a"] != 2 || per["b"] != 2 {
		t.Fatalf("boot: %d ready, per host %v", res.Ready, per)
	}
	t.Logf("4 clones on 2 hosts ready in %s", res.Took)
	var infos []coord.JobInfo
	json.Unmarshal([]byte(cli("jobs", "-o", "json")), &infos)
	if len(infos) != 1 || infos[0].Name != "j" || len(infos[0].VMs) != 4 {
		t.Fatalf("jobs: %+v", infos)
	}
	var vms []hostd.VMInfo
	json.Unmarshal([]byte(cli("vm", "list", "--host", b.Socket(), "-o", "json")), &vms)
	for _, v := range vms {
		if v.State != "running" {
			t.Errorf("%s on b: %s", v.Name, v.State)
		}
	}
	if len(vms) != 2 {
		t.Errorf("b runs %d VMs, want 2", len(vms))
	}
}

// bootSetup starts a coordinator and two hostds a and b, each with the
// template "small" of the test guest, and returns a CLI runner that fails
// the test on error.
func bootSetup(t *testing.T) (*testenv.Coord, func(args ...string) string, *testenv.Hostd, *testenv.Hostd) {
	testenv.RequireRoot(t)
	kernel, initrd := testguest.Paths(t)
	a := testenv.StartHostd(t, "a", nil, "", "")
	b := testenv.StartHostd(t, "b", nil, "", "")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil)
	spec := filepath.Join(t.TempDir(), "small.yaml")
	os.WriteFile(spec, []byte(fmt.Sprintf(`name: small
memory: 256M
vcpus: 1
kernel: %s
initrd: %s
append: "console=ttyS0 quiet panic=-1 symvirt.agent=1"
nics: [{id: net0, model: virtio-net-pci}]
guest_channel: {type: virtio-serial}
`, kernel, initrd)), 0o600)
	cli := func(args ...string) string {
		t.Helper()
		out, err := c.CLI(t, args...)
		if err != nil {
			t.Fatalf("symvirt %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	cli("hosts", "add", "a", a.Socket())
	cli("hosts", "add", "b", b.Socket())
	for _, h := range []*testenv.Hostd{a, b} {
		t.Log(strings.TrimSpace(cli("template", "create", "small", "--from", spec, "--host", h.Socket())))
	}
	return c, cli, a, b
}

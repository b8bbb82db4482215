package coord_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord"
)

// `symvirt jobs create -f` of a job file with template: and count: boots
// the clones through the coordinator's boot: one on each host, each with
// its time to guestd-ready, recorded as the job; a second job of the same
// name is refused, the text output shows each VM and the total, and
// the API's POST /v1/jobs takes the same job.
func TestJobsCreateCount(t *testing.T) {
	c, cli, _, _ := bootSetup(t)
	dir := t.TempDir()
	file := func(name, body string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	web := file("web.yaml", "name: web\ntemplate: small\ncount: 2\nhosts: [a, b]\n")
	var res coord.BootResult
	out := cli("jobs", "create", "-f", web, "-o", "json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	per := map[string]int{}
	for _, vm := range res.VMs {
		per[vm.Host]++
		t.Logf("%s on %s: ready in %s", vm.Name, vm.Host, vm.Ready)
		if vm.Error != "" || vm.Ready <= 0 || !strings.HasPrefix(vm.Name, "web-") {
			t.Errorf("%+v", vm)
		}
	}
	if res.Job != "web" || res.Ready != 2 || res.Count != 2 || per["a"] != 1 || per["b"] != 1 {
		t.Fatalf("jobs create: %+v (per host %v)", res, per)
	}
	var j coord.Job
	if err := json.Unmarshal([]byte(cli("jobs", "show", "web", "-o", "json")), &j); err != nil || len(j.VMs) != 2 {
		t.Fatalf("jobs show web: %+v %v", j, err)
	}
	if out, err := c.CLI(t, "jobs", "create", "-f", web); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("the same job again: %v\n%s", err, out)
	}
	both := file("both.yaml", "name: both\ntemplate: small\ncount: 1\nvms: [{name: v, host: a}]\n")
	if out, err := c.CLI(t, "jobs", "create", "-f", both); err == nil || !strings.Contains(out, "together") {
		t.Fatalf("vms and count: %v\n%s", err, out)
	}
	text := cli("jobs", "create", "-f", file("one.yaml", "name: one\ntemplate: small\ncount: 1\n"))
	if !strings.Contains(text, "one-0") || !strings.Contains(text, "job one: 1/1 VMs of template small ready in") {
		t.Fatalf("text output:\n%s", text)
	}
	t.Log(text)
	// The API's job creation takes the same job (no progress: one reply).
	var api coord.Job
	err := coord.NewClient(c.Socket(), nil).Do(context.Background(), "POST", "/v1/jobs",
		coord.Job{Name: "api", Template: "small", Count: 1}, &api)
	if err != nil || len(api.VMs) != 1 || api.VMs[0].Name != "api-0" {
		t.Fatalf("POST /v1/jobs with count: %+v %v", api, err)
	}
}

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// entries lists a directory's names.
func entries(dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// Names become directories: a job's checkpoints go to ROOT/<job>-<time>/<vm>
// and a VM's state to STATE/vms/<vm>. A job named "../x" (its checkpoints
// would land beside the root), a job VM named "../../x", and a VM named
// "../../x" on a hostd are refused through the real CLI and API with an
// error naming the field, and nothing is created outside the roots; a
// well-named job is accepted (the control).
func TestNamesCannotLeaveTheirRoot(t *testing.T) {
	base := t.TempDir()
	ckRoot := filepath.Join(base, "ck")
	os.Mkdir(ckRoot, 0o700)
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := testenv.StartCoord(t, nil, ckRoot, nil)
	if out, err := c.CLI(t, "hosts", "add", "a", h.Socket()); err != nil {
		t.Fatalf("hosts add: %v\n%s", err, out)
	}
	before := entries(base)
	job := func(name, vm string) (string, error) {
		f := filepath.Join(t.TempDir(), "job.yaml")
		os.WriteFile(f, []byte("name: \""+name+"\"\nvms:\n  - {name: \""+vm+"\", host: a}\n"), 0o600)
		return c.CLI(t, "jobs", "create", "-f", f)
	}
	for _, tc := range []struct{ job, vm, field string }{
		{"../x", "vm1", "field name"},
		{"../../etc", "vm1", "field name"},
		{"j1", "../../x", "field vms[0].name"},
		{"j1", "a/b", "field vms[0].name"},
	} {
		out, err := job(tc.job, tc.vm)
		t.Logf("job %q vm %q: %s", tc.job, tc.vm, strings.TrimSpace(out))
		if err == nil || !strings.Contains(out, tc.field) || !strings.Contains(out, "invalid") {
			t.Errorf("job %q vm %q: accepted or unclear (%v):\n%s", tc.job, tc.vm, err, out)
		}
	}
	if out, _ := c.CLI(t, "jobs"); strings.TrimSpace(out) != "" {
		t.Fatalf("a refused job was recorded:\n%s", out)
	}
	if out, err := job("good-job", "vm1"); err != nil {
		t.Fatalf("control: a well-named job is refused: %v\n%s", err, out)
	}

	// hostd: the CLI and the API refuse a VM named "../../x".
	spec := filepath.Join(t.TempDir(), "vm.yaml")
	os.WriteFile(spec, []byte("name: \"../../x\"\nmemory: 64M\nkernel: /nonexistent\n"), 0o600)
	out, err := exec.Command(testenv.Binary(t), "vm", "create", "-f", spec, "--host", h.Socket()).CombinedOutput()
	t.Logf("vm create ../../x: %s", strings.TrimSpace(string(out)))
	if err == nil || !strings.Contains(string(out), "field name") {
		t.Errorf("vm create of \"../../x\": %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = h.Client().Create(ctx, hostd.Spec{Name: "../../x", Memory: 64, Kernel: "/nonexistent"}, false)
	if err == nil || !strings.Contains(err.Error(), "field name") {
		t.Errorf("API create of \"../../x\": %v", err)
	}

	if after := entries(base); !slices.Equal(after, before) {
		t.Errorf("beside the checkpoint root: %v, was %v", after, before)
	}
	// vms/../../x is beside the state dir.
	if _, err := os.Lstat(filepath.Join(filepath.Dir(h.StateDir), "x")); err == nil {
		t.Errorf("hostd created %s", filepath.Join(filepath.Dir(h.StateDir), "x"))
	}
	if vms := entries(h.Layout().VMs()); len(vms) != 0 {
		t.Errorf("hostd's vms dir: %v", vms)
	}
}

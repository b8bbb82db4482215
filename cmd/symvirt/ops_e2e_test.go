package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/testenv"
)

var opsCmds = [][]string{{"ops"}, {"ops", "show", "op-1"}, {"ops", "watch", "op-1"}, {"ops", "cancel", "op-1"}}

// symvirt ops against no coordinator, then against a real one: every
// subcommand answers, as text and JSON, with the CLI's exit codes; an
// operation that ran (and rolled back: its VM is not on its host) is
// listed, shown, watched (exit: its outcome's) and has nothing left to
// cancel.
func TestCLIOps(t *testing.T) {
	stopped := testenv.StartCoord(t, nil, t.TempDir(), nil)
	stopped.Kill()
	for _, args := range opsCmds {
		for _, o := range [][]string{nil, {"-o", "json"}} {
			r := symvirt(t, []string{"SYMVIRT_COORD=" + stopped.Socket()}, append(args, o...)...)
			expect(t, r, exitUnreachable, "unreachable", "cannot reach the coordinator at "+stopped.Socket(), "--coord")
		}
	}
	for _, args := range [][]string{{"ops", "show"}, {"ops", "watch", "a", "b"}, {"ops", "cancel"}} {
		if r := symvirt(t, []string{"SYMVIRT_COORD=" + stopped.Socket()}, args...); r.exit != exitUsage {
			t.Errorf("want exit %d:\n%s", exitUsage, r)
		}
	}

	h := testenv.StartHostd(t, "a", nil, "", "")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil)
	env := []string{"SYMVIRT_COORD=" + c.Socket()}
	if r := symvirt(t, env, "ops"); r.exit != 0 || r.stdout != "no operations\n" {
		t.Errorf("ops with none:\n%s", r)
	}
	if r := symvirt(t, env, "ops", "-o", "json"); r.exit != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("ops -o json with none: want []:\n%s", r)
	}
	for _, args := range opsCmds[1:] {
		expect(t, symvirt(t, env, args...), exitNotFound, "not_found", `operation "op-1"`)
		expect(t, symvirt(t, env, append(args, "-o", "json")...), exitNotFound, "not_found", `operation "op-1"`)
	}

	job := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(job, []byte("name: j1\nvms:\n  - {name: vm1, host: a}\n"), 0o600)
	for _, args := range [][]string{{"hosts", "add", "a", h.Socket()}, {"jobs", "create", "-f", job}} {
		if r := symvirt(t, env, args...); r.exit != 0 {
			t.Fatalf("%s", r)
		}
	}
	if r := symvirt(t, env, "checkpoint", "j1"); r.exit != exitRolledBack {
		t.Fatalf("a checkpoint of a VM that is not there: want exit %d:\n%s", exitRolledBack, r)
	}
	r := symvirt(t, env, "ops", "-o", "json")
	var views []coord.OpView
	if err := json.Unmarshal([]byte(r.stdout), &views); err != nil || len(views) != 1 {
		t.Fatalf("ops -o json: %v\n%s", err, r)
	}
	id := views[0].ID
	if v := views[0]; v.Running || v.Kind != "checkpoint" || v.Job != "j1" || v.Result == nil || v.Result.Outcome != "aborted" ||
		len(v.VMs) != 1 || v.VMs[0].Name != "vm1" {
		t.Errorf("ops -o json: %+v", v)
	}
	if r := symvirt(t, env, "ops"); r.exit != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "aborted") {
		t.Errorf("ops:\n%s", r)
	}
	if r := symvirt(t, env, "ops", "show", id); r.exit != 0 || !strings.Contains(r.stdout, "operation "+id+": checkpoint of job j1, aborted") ||
		!strings.Contains(r.stdout, "vm1") {
		t.Errorf("ops show:\n%s", r)
	}
	if r := symvirt(t, env, "ops", "watch", id); r.exit != exitRolledBack || !strings.Contains(r.stdout, "checkpoint of job j1: aborted") ||
		!strings.HasPrefix(r.stderr, "symvirt: ") {
		t.Errorf("ops watch of an operation that rolled back: want its result, exit %d:\n%s", exitRolledBack, r)
	}
	r = symvirt(t, env, "ops", "watch", id, "-o", "json")
	if code, _ := jsonError(t, r); code != "failed" || r.exit != exitRolledBack || !strings.Contains(r.stdout, `"outcome":"aborted"`) {
		t.Errorf("ops watch -o json: want the last view, code failed, exit %d:\n%s", exitRolledBack, r)
	}
	if r := symvirt(t, env, "ops", "cancel", id); r.exit != 0 || !strings.Contains(r.stdout, "nothing to cancel: operation "+id+" already ended (aborted)") {
		t.Errorf("ops cancel of an ended operation:\n%s", r)
	}
}

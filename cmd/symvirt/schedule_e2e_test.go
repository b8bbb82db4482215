package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/testenv"
)

// schedule, hosts cordon|uncordon and evacuate HOSTLIST against a real
// coordinator and hostd (no VM runs): each prints a line on success and
// JSON with -o json; each refusal has its exit code and wire code; with
// no coordinator every one of them exits 3.
func TestCLIScheduleAndCordon(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil)
	env := []string{"SYMVIRT_COORD=" + c.Socket()}
	job := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(job, []byte("name: j1\nvms:\n  - {name: vm1, host: a}\n"), 0o600)
	ok := func(want string, args ...string) result {
		t.Helper()
		r := symvirt(t, env, args...)
		if r.exit != 0 || !strings.Contains(r.stdout, want) || r.stderr != "" {
			t.Errorf("want exit 0 and %q on stdout, nothing on stderr:\n%s", want, r)
		}
		return r
	}
	fails := func(exit int, code, want string, args ...string) {
		t.Helper()
		expect(t, symvirt(t, env, args...), exit, code, want)
		expect(t, symvirt(t, env, append(args, "-o", "json")...), exit, code, want)
	}
	ok("host a added", "hosts", "add", "a", h.Socket())
	ok("no schedules", "schedule", "list")
	fails(exitNotFound, "not_found", `"j1"`, "schedule", "j1", "--every", "1h")
	ok("job j1 created", "jobs", "create", "-f", job)
	ok("j1\tvm1@a\tno complete checkpoint", "jobs")
	fails(exitUsage, "usage", "--every is missing", "schedule", "j1")
	fails(exitUsage, "invalid", "want at least 1s", "schedule", "j1", "--every", "500ms")
	fails(exitUsage, "invalid", "keep 0: want at least 1", "schedule", "j1", "--every", "1h", "--keep", "0")
	ok("job j1: a checkpoint every 1h0m0s, keeping the 3 newest complete ones; next at ", "schedule", "j1", "--every", "1h")
	ok("job j1: a checkpoint every 2h0m0s, keeping the 5 newest", "schedule", "j1", "--every", "2h", "--keep", "5")
	r := ok("JOB", "schedule", "list")
	if !strings.Contains(r.stdout, "j1   2h0m0s  5 ") {
		t.Errorf("schedule list:\n%s", r)
	}
	r = symvirt(t, env, "schedule", "list", "-o", "json")
	var scheds []struct {
		Job   string
		Every int64 `json:"every_ns"`
		Keep  int
	}
	if json.Unmarshal([]byte(r.stdout), &scheds) != nil || len(scheds) != 1 || scheds[0].Keep != 5 || scheds[0].Every != 2*3600e9 {
		t.Errorf("schedule list -o json:\n%s", r)
	}
	ok("schedule of job j1 removed", "schedule", "rm", "j1")
	fails(exitNotFound, "not_found", `schedule of job "j1"`, "schedule", "rm", "j1")

	ok("host a cordoned: no new VM is placed there (symvirt hosts uncordon a)", "hosts", "cordon", "a", "--reason", "disk")
	if r := ok("a\t"+h.Socket()+"\tcordoned since ", "hosts"); !strings.Contains(r.stdout, ": disk\tcpu ") {
		t.Errorf("hosts: no reason:\n%s", r)
	}
	job2 := filepath.Join(t.TempDir(), "job2.yaml")
	os.WriteFile(job2, []byte("name: j2\nvms:\n  - {name: vm2, host: a}\n"), 0o600)
	fails(exitUsage, "invalid", "host a is cordoned", "jobs", "create", "-f", job2)
	fails(exitNotFound, "not_found", `"nohost"`, "hosts", "cordon", "nohost")
	ok("host a uncordoned", "hosts", "uncordon", "a")
	if r := ok("a\t"+h.Socket()+"\tcpu ", "hosts"); strings.Contains(r.stdout, "cordoned") {
		t.Errorf("hosts after uncordon:\n%s", r)
	}
	ok("job j2 created", "jobs", "create", "-f", job2)

	fails(exitUsage, "usage", "bad hostlist", "evacuate", "a[1-")
	// An unknown host in the list: nothing is done, none cordoned.
	fails(exitNotFound, "not_found", `"nohost"`, "evacuate", "a,nohost")
	if r := ok("a\t", "hosts"); strings.Contains(r.stdout, "cordoned") {
		t.Errorf("a cordoned by a refused evacuation:\n%s", r)
	}

	c.Kill()
	for _, args := range [][]string{{"schedule", "j1", "--every", "1h"}, {"schedule", "list"}, {"schedule", "rm", "j1"},
		{"hosts", "cordon", "a"}, {"hosts", "uncordon", "a"}, {"evacuate", "a[1-2]"}} {
		for _, o := range [][]string{nil, {"-o", "json"}} {
			expect(t, symvirt(t, env, append(args, o...)...), exitUnreachable, "unreachable", "cannot reach the coordinator")
		}
	}
}

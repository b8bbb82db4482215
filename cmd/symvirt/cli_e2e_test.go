package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

// result is one run of the built symvirt binary.
type result struct {
	args           []string
	stdout, stderr string
	exit           int
}

// symvirt runs the built binary as a user would, with env added.
func symvirt(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{args: args, stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.exit = ee.ExitCode()
	case err != nil:
		t.Fatalf("symvirt %v: %v", args, err)
	}
	return r
}

func (r result) String() string {
	return "symvirt " + strings.Join(r.args, " ") + "\n--- exit " + strconv.Itoa(r.exit) + "\n--- stdout\n" + r.stdout + "--- stderr\n" + r.stderr
}

// jsonError decodes stderr as exactly one {"error":{code,message}} line.
func jsonError(t *testing.T, r result) (code, msg string) {
	t.Helper()
	var e struct {
		Error *struct{ Code, Message string } `json:"error"`
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &e) != nil || e.Error == nil || e.Error.Code == "" {
		t.Errorf("stderr is not one JSON error line:\n%s", r)
		return "", ""
	}
	return e.Error.Code, e.Error.Message
}

// expect checks a failed run: its exit code, nothing on stdout, and its
// error on stderr (text: one "symvirt: " line holding each of want; JSON:
// the code, and a message holding each of want).
func expect(t *testing.T, r result, exit int, code string, want ...string) {
	t.Helper()
	if r.exit != exit {
		t.Errorf("exit %d, want %d:\n%s", r.exit, exit, r)
	}
	if r.stdout != "" {
		t.Errorf("stdout is not empty:\n%s", r)
	}
	msg := r.stderr
	if isJSON(r.args) {
		var c string
		c, msg = jsonError(t, r)
		if c != code {
			t.Errorf("code %q, want %q:\n%s", c, code, r)
		}
	} else if !strings.HasPrefix(r.stderr, "symvirt: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("stderr is not one \"symvirt: \" line:\n%s", r)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not say %q:\n%s", w, r)
		}
	}
	for _, leak := range []string{"http://", "https://", "Post ", "Get ", "Delete "} {
		if strings.Contains(r.stderr, leak) {
			t.Errorf("the error shows the internal HTTP call (%q):\n%s", leak, r)
		}
	}
}

func isJSON(args []string) bool {
	for i, a := range args {
		if a == "-o" && i+1 < len(args) && args[i+1] == "json" {
			return true
		}
	}
	return false
}

// clusterCommands are every command that talks to the coordinator.
var clusterCmds = [][]string{
	{"checkpoint", "j1"}, {"checkpoint", "j1", "--live=false", "--bandwidth", "10M"},
	{"restart", "j1"}, {"restart", "j1", "--checkpoint", "c1", "--exclude-host", "a"},
	{"migrate", "vm1", "--to", "b"}, {"migrate", "j1", "--to", "b", "--live=false"},
	{"evacuate", "a"}, {"status"}, {"hosts"}, {"hosts", "add", "a", "/x.sock"}, {"hosts", "rm", "a"},
	{"jobs"}, {"jobs", "show", "j1"}, {"jobs", "rm", "j1"}, {"jobs", "create", "-f", "JOBFILE"},
	{"checkpoints"}, {"checkpoints", "list"}, {"checkpoints", "show", "c1"}, {"checkpoints", "rm", "c1"},
	{"evacuate", "node[1-2]"}, {"hosts", "cordon", "a"}, {"hosts", "uncordon", "a"},
	{"schedule", "j1", "--every", "1h", "--keep", "3"}, {"schedule", "list"}, {"schedule", "rm", "j1"},
}

// hostCmds are every command that talks to one hostd.
var hostCmds = [][]string{
	{"vm", "list"}, {"vm", "status", "vm1"}, {"vm", "start", "vm1"}, {"vm", "stop", "vm1"}, {"vm", "pause", "vm1"},
	{"vm", "resume", "vm1"}, {"vm", "delete", "vm1"}, {"vm", "create", "-f", "SPECFILE"},
	{"vm", "checkpoint", "vm1", "--dir", "/tmp/nonexistent-ck"}, {"vm", "restore", "--dir", "/tmp/nonexistent-ck"},
	{"vm", "migrate", "vm1", "--to-addr", "10.0.0.2:7070"}, {"vm", "detach", "vm1", "d0"}, {"vm", "attach", "vm1", "d0"},
	{"vm", "drill", "vm1"}, {"vm", "rejuvenate", "vm1"}, {"rejuvenate"},
}

func files(t *testing.T, cmds [][]string) [][]string {
	dir := t.TempDir()
	job, spec := filepath.Join(dir, "job.yaml"), filepath.Join(dir, "vm.yaml")
	os.WriteFile(job, []byte("name: j1\nvms:\n  - {name: vm1, host: a}\n"), 0o600)
	os.WriteFile(spec, []byte("name: vm1\nmemory: 64M\nkernel: /nonexistent\n"), 0o600)
	var out [][]string
	for _, c := range cmds {
		c = append([]string(nil), c...)
		for i := range c {
			c[i] = strings.NewReplacer("JOBFILE", job, "SPECFILE", spec).Replace(c[i])
		}
		out = append(out, c)
	}
	return out
}

// With no daemon to talk to (a coordinator that was started and stopped,
// a socket path where nothing ever ran, a TCP address nobody listens on)
// every command fails the same way: exit 3, nothing on stdout (no empty
// table, no zeroed JSON, no null), one error naming the daemon, the
// address tried and how to point the CLI elsewhere, without the internal
// HTTP call; with -o json that error is one JSON line with code
// "unreachable".
func TestCLIWithoutDaemons(t *testing.T) {
	stopped := testenv.StartCoord(t, nil, t.TempDir(), nil)
	stopped.Kill()
	pki := t.TempDir()
	for _, args := range [][]string{{"certs", "init", "--dir", pki}, {"certs", "issue", "--dir", pki, "--role", "client", "--name", "admin"}} {
		if r := symvirt(t, nil, args...); r.exit != 0 {
			t.Fatalf("%s", r)
		}
	}
	client := []string{"SYMVIRT_TLS_CERT=" + filepath.Join(pki, "client-admin.crt"),
		"SYMVIRT_TLS_KEY=" + filepath.Join(pki, "client-admin.key"), "SYMVIRT_TLS_CA=" + filepath.Join(pki, "ca.crt")}
	for _, coordAddr := range []string{stopped.Socket(), filepath.Join(t.TempDir(), "never.sock"), "127.0.0.1:1"} {
		env := []string{"SYMVIRT_COORD=" + coordAddr}
		if !strings.HasPrefix(coordAddr, "/") {
			env = append(env, client...) // a TCP coordinator is mutual TLS only
		}
		for _, args := range files(t, clusterCmds) {
			for _, o := range [][]string{nil, {"-o", "json"}} {
				r := symvirt(t, env, append(args, o...)...)
				expect(t, r, exitUnreachable, "unreachable", "cannot reach the coordinator at "+coordAddr, "--coord", "SYMVIRT_COORD")
			}
		}
	}
	for _, hostAddr := range []string{filepath.Join(t.TempDir(), "hostd.sock"), "127.0.0.1:1"} {
		env := []string{"SYMVIRT_HOST=" + hostAddr}
		for _, args := range files(t, hostCmds) {
			for _, o := range [][]string{nil, {"-o", "json"}} {
				r := symvirt(t, env, append(args, o...)...)
				expect(t, r, exitUnreachable, "unreachable", "cannot reach hostd at "+hostAddr, "--host", "SYMVIRT_HOST")
			}
		}
	}
}

// Mistakes on the command line exit 2 before anything is sent, with the
// help printed once at most (an unknown flag) and the error last.
func TestCLIUsageErrors(t *testing.T) {
	env := []string{"SYMVIRT_COORD=/nonexistent/coord.sock", "SYMVIRT_HOST=/nonexistent/hostd.sock"}
	r := symvirt(t, env, "--bogus")
	if r.exit != exitUsage || r.stdout != "" || strings.Count(r.stderr, "USAGE:") != 1 ||
		!strings.HasSuffix(r.stderr, "symvirt: flag provided but not defined: -bogus\n") {
		t.Errorf("an unknown global flag: want the help once on stderr, then the error, exit 2:\n%s", r)
	}
	for _, args := range [][]string{
		{"checkpoint"}, {"checkpoint", "a", "b"}, {"migrate", "vm1"}, {"evacuate"}, {"hosts", "add", "a"},
		{"hosts", "rm"}, {"jobs", "show"}, {"jobs", "rm"}, {"jobs", "create"}, {"checkpoints", "show"},
		{"checkpoint", "j1", "--bandwidth", "fast"}, {"status", "-o", "yaml"}, {"migrate", "vm1", "--to", "b", "--live=false", "--dependency-aware"},
		{"vm", "status"}, {"vm", "migrate", "vm1"}, {"vm", "detach", "vm1"}, {"vm", "checkpoint", "vm1", "--dir", "/x", "--stop", "--live"},
		{"rejuvenate", "--parallel", "0"},
	} {
		for _, o := range [][]string{nil, {"-o", "json"}} {
			a := append(append([]string(nil), args...), o...)
			if args[len(args)-1] == "yaml" && o != nil {
				continue
			}
			r := symvirt(t, env, a...)
			if r.exit != exitUsage || r.stdout != "" {
				t.Errorf("want exit 2 and no stdout:\n%s", r)
			}
			if o != nil {
				if code, _ := jsonError(t, r); code != "usage" {
					t.Errorf("code %q, want usage:\n%s", code, r)
				}
			} else if !strings.Contains(lastLine(r.stderr), "symvirt: ") {
				t.Errorf("the error is not the last line:\n%s", r)
			}
		}
	}
	// A TCP coordinator without a client certificate: said before any
	// connection (its API is mutual TLS only).
	for _, o := range [][]string{nil, {"-o", "json"}} {
		r := symvirt(t, []string{"SYMVIRT_COORD=10.0.0.100:7443"}, append([]string{"status"}, o...)...)
		expect(t, r, exitUsage, "usage", "--coord 10.0.0.100:7443 is a TCP address", "--tls-cert")
	}
	if r := symvirt(t, nil, "--version"); r.exit != 0 || !strings.HasPrefix(r.stdout, "symvirt version ") || r.stderr != "" {
		t.Errorf("--version:\n%s", r)
	}
	if r := symvirt(t, nil, "--help"); r.exit != 0 || !strings.Contains(r.stdout, "EXIT CODES") {
		t.Errorf("--help has no exit codes:\n%s", r)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// Against a real coordinator and hostd (no VM needs to run): every
// command prints a line on success and its result as JSON with -o json;
// each refusal has its exit code and wire code, and a job operation that
// ran and failed prints what happened (stdout) and the error (stderr).
func TestCLIAgainstDaemons(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil)
	env := []string{"SYMVIRT_COORD=" + c.Socket(), "SYMVIRT_HOST=" + h.Socket()}
	dir := t.TempDir()
	job := filepath.Join(dir, "job.yaml")
	os.WriteFile(job, []byte("name: j1\nvms:\n  - {name: vm1, host: a}\n"), 0o600)
	ok := func(want string, args ...string) result {
		t.Helper()
		r := symvirt(t, env, args...)
		if r.exit != 0 || !strings.Contains(r.stdout, want) || r.stderr != "" {
			t.Errorf("want exit 0 and %q on stdout, nothing on stderr:\n%s", want, r)
		}
		return r
	}
	okJSON := func(v any, args ...string) {
		t.Helper()
		r := symvirt(t, env, append(args, "-o", "json")...)
		if r.exit != 0 || r.stderr != "" || json.Unmarshal([]byte(r.stdout), v) != nil {
			t.Errorf("want exit 0 and JSON on stdout:\n%s", r)
		}
	}
	fails := func(exit int, code, want string, args ...string) {
		t.Helper()
		expect(t, symvirt(t, env, args...), exit, code, want)
		expect(t, symvirt(t, env, append(args, "-o", "json")...), exit, code, want)
	}

	ok("host a added ("+h.Socket()+")", "hosts", "add", "a", h.Socket())
	ok("a\t"+h.Socket(), "hosts")
	ok("host a ("+h.Socket()+"): up, 0 VMs", "status")
	ok("job j1 created: vm1@a", "jobs", "create", "-f", job)
	fails(exitUsage, "exists", `job "j1": already exists`, "jobs", "create", "-f", job)
	ok("j1\tvm1@a", "jobs")
	ok("job j1, created ", "jobs", "show", "j1")
	ok("  vm1 on a", "jobs", "show", "j1")
	var j struct {
		Name string
		VMs  []struct{ Name, Host string }
	}
	okJSON(&j, "jobs", "show", "j1")
	if j.Name != "j1" || len(j.VMs) != 1 || j.VMs[0].Host != "a" {
		t.Errorf("jobs show -o json: %+v", j)
	}
	fails(exitNotFound, "not_found", `"nojob"`, "jobs", "show", "nojob")
	fails(exitNotFound, "not_found", `"nojob"`, "checkpoint", "nojob")
	fails(exitNotFound, "not_found", "", "migrate", "vm1", "--to", "nohost")
	fails(exitNotFound, "not_found", "", "checkpoints", "show", "nock")
	fails(exitNotFound, "not_found", "", "checkpoints", "rm", "nock")
	fails(exitBusy, "busy", "runs vm vm1 of job j1", "hosts", "rm", "a")
	fails(exitNotFound, "not_found", "", "vm", "status", "vm1")
	fails(exitNotFound, "not_found", "", "vm", "start", "vm1")
	ok("NAME", "vm", "list")

	// vm1 is not on host a: the checkpoint runs, its prepare fails, it
	// rolls back (exit 5); the result says so on stdout.
	r := symvirt(t, env, "checkpoint", "j1")
	t.Logf("%s", r)
	if r.exit != exitRolledBack || !strings.Contains(r.stdout, "checkpoint of job j1: aborted, checkpoint j1-") ||
		!strings.Contains(r.stdout, "vm1") || !strings.HasPrefix(r.stderr, "symvirt: ") {
		t.Errorf("a failed checkpoint: want exit 5, the result on stdout, the error on stderr:\n%s", r)
	}
	r = symvirt(t, env, "checkpoint", "j1", "-o", "json")
	var res struct{ Outcome, Checkpoint string }
	if json.Unmarshal([]byte(r.stdout), &res) != nil || res.Outcome != "aborted" || res.Checkpoint != "failed" {
		t.Errorf("a failed checkpoint -o json: want the result on stdout:\n%s", r)
	}
	if code, _ := jsonError(t, r); code != "failed" || r.exit != exitRolledBack {
		t.Errorf("a failed checkpoint -o json: code %q exit %d, want failed, 5:\n%s", code, r.exit, r)
	}
	ok("ID", "checkpoints")

	ok("job j1 removed; its VMs keep running: vm1@a", "jobs", "rm", "j1")
	fails(exitNotFound, "not_found", "", "jobs", "rm", "j1")
	ok("nothing to move", "evacuate", "a")
	if r := symvirt(t, env, "evacuate", "a", "-o", "json"); r.exit != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("evacuate of an empty host -o json: want [] (never null):\n%s", r)
	}
	ok("host a removed", "hosts", "rm", "a")
	fails(exitNotFound, "not_found", "", "hosts", "rm", "a")
	if r := ok("", "hosts"); r.stdout != "" {
		t.Errorf("hosts after rm:\n%s", r)
	}
	ok("no hosts", "status")
}

// A hostd told to listen on every address (and given no migration
// address) cannot tell other hosts where to send a migration: it refuses
// to start and says which flag fixes it, rather than listening for
// migrations on loopback, which no other host reaches. With the address
// given, it starts (the control).
func TestHostdWildcardListenNeedsMigrationAddress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Binary(t), "hostd", "--state-dir", t.TempDir(), "--listen", "0.0.0.0:0", "--insecure")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(string(out), "--migration-address") {
		t.Fatalf("hostd --listen 0.0.0.0:0 without a migration address: want exit 2 naming --migration-address, got %v:\n%s", err, out)
	}
	h := testenv.StartHostd(t, "a", nil, "", "", "--listen", "0.0.0.0:0", "--insecure", "--migration-address", "127.0.0.1")
	if r := symvirt(t, []string{"SYMVIRT_HOST=" + h.Socket()}, "vm", "list"); r.exit != 0 {
		t.Fatalf("control: %s", r)
	}
}

// A host that is down when an operation needs it loses its VMs: the
// operation cannot finish as asked and an operator must look (restart
// the job from a checkpoint), so the CLI exits 6 with code
// "needs_operator", the result naming the lost VM on stdout.
func TestCLIHostDownExits6(t *testing.T) {
	a := testenv.StartHostd(t, "a", nil, "", "")
	b := testenv.StartHostd(t, "b", nil, "", "")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil)
	env := []string{"SYMVIRT_COORD=" + c.Socket()}
	job := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(job, []byte("name: j2\nvms:\n  - {name: vm1, host: a}\n  - {name: vm2, host: b}\n"), 0o600)
	for _, args := range [][]string{{"hosts", "add", "a", a.Socket()}, {"hosts", "add", "b", b.Socket()}, {"jobs", "create", "-f", job}} {
		if r := symvirt(t, env, args...); r.exit != 0 {
			t.Fatalf("%s", r)
		}
	}
	a.Kill()
	r := symvirt(t, env, "checkpoint", "j2", "-o", "json")
	t.Logf("%s", r)
	var res struct{ Lost []string }
	json.Unmarshal([]byte(r.stdout), &res)
	if code, msg := jsonError(t, r); code != "needs_operator" || r.exit != exitPartial || len(res.Lost) != 1 || res.Lost[0] != "vm1" ||
		!strings.Contains(msg, "lost [vm1]") {
		t.Errorf("checkpoint with host a down: code %q exit %d lost %v, want needs_operator, 6, [vm1]:\n%s", code, r.exit, res.Lost, r)
	}
	r = symvirt(t, env, "checkpoint", "j2")
	if r.exit != exitPartial || !strings.Contains(r.stdout, "lost (their host went down; symvirt restart j2): vm1") {
		t.Errorf("text: want exit 6 and the lost VM with what to do:\n%s", r)
	}
}

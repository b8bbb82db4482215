// Tests of scripts/symvirt-node-alert: the real script, run with SYMVIRT
// pointing at the real symvirt binary, against a real coordinator and two
// real hostds (no VMs, no namespaces: the hosts only have to exist for the
// coordinator). What they show: Slurm hostlists expand (built-in expander)
// into one evacuation per node, in order; the outcome goes to the log file
// and to syslog (through SYMVIRT_NODE_ALERT_LOGGER, replaced by a recorder);
// the exit status is 0 only if every node was evacuated. The outcome per
// VM of a real evacuation (hosts with running VMs) is the MPI end-to-end
// test's part.
package scripts_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

type alertEnv struct {
	script, log, syslog string
	env                 []string
}

func newAlertEnv(t *testing.T, coordSock string) *alertEnv {
	dir := t.TempDir()
	a := &alertEnv{
		script: filepath.Join(testenv.RepoRoot(t), "scripts", "symvirt-node-alert"),
		log:    filepath.Join(dir, "log", "node-alert.log"), // the script makes log/
		syslog: filepath.Join(dir, "syslog"),
	}
	recorder := filepath.Join(dir, "logger")
	if err := os.WriteFile(recorder, []byte("#!/bin/sh\necho \"$*\" >>"+a.syslog+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	a.env = []string{"SYMVIRT=" + testenv.Binary(t), "SYMVIRT_COORD=" + coordSock,
		"SYMVIRT_NODE_ALERT_LOG=" + a.log, "SYMVIRT_NODE_ALERT_LOGGER=" + recorder,
		"SYMVIRT_NODE_ALERT_SCONTROL=", "SYMVIRT_NODE_ALERT_CONF=/nonexistent"}
	return a
}

// run runs the script with args; returns its exit status and the new log
// lines (without their timestamp and pid).
func (a *alertEnv) run(t *testing.T, args ...string) (int, []string) {
	t.Helper()
	before := 0
	if b, err := os.ReadFile(a.log); err == nil {
		before = len(b)
	}
	cmd := exec.Command("sh", append([]string{a.script}, args...)...)
	cmd.Env = append(os.Environ(), a.env...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(a.log)
	var lines []string
	prefix := regexp.MustCompile(`^\S+Z symvirt-node-alert\[\d+\]: `)
	for _, l := range strings.Split(strings.TrimSpace(string(b[before:])), "\n") {
		if l != "" {
			lines = append(lines, prefix.ReplaceAllString(l, ""))
		}
	}
	t.Logf("symvirt-node-alert %s: exit %d\n%s%s", strings.Join(args, " "), code, out, strings.Join(lines, "\n"))
	return code, lines
}

// evacuated lists the nodes the log says were tried, in order.
func tried(lines []string) []string {
	var hosts []string
	for _, l := range lines {
		if h, ok := strings.CutSuffix(strings.TrimPrefix(l, "node "), ": evacuating"); ok && strings.HasPrefix(l, "node ") {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if strings.Contains(l, want) {
			return true
		}
	}
	return false
}

func TestNodeAlert(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	coord := testenv.StartCoord(t, nil, t.TempDir(), nil)
	for _, name := range []string{"node1", "node2"} {
		h := testenv.StartHostd(t, name, nil, "", "")
		if out, err := coord.CLI(t, "hosts", "add", name, h.Socket()); err != nil {
			t.Fatalf("hosts add %s: %v\n%s", name, err, out)
		}
	}
	a := newAlertEnv(t, coord.Socket())

	t.Run("all evacuated", func(t *testing.T) {
		code, lines := a.run(t, "node[1-2]")
		if code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		if got := tried(lines); strings.Join(got, " ") != "node1 node2" {
			t.Errorf("evacuated %v, want node1 node2", got)
		}
		for _, want := range []string{"node node1: no VMs to move", "node node1: evacuated",
			"node node2: evacuated", "done: every node evacuated"} {
			if !contains(lines, want) {
				t.Errorf("log lacks %q", want)
			}
		}
	})

	t.Run("unknown node fails", func(t *testing.T) {
		code, lines := a.run(t, "node2,node9")
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		for _, want := range []string{"node node2: evacuated", "node node9: symvirt evacuate failed (exit",
			"node node9: NOT evacuated", "done: NOT evacuated: node9"} {
			if !contains(lines, want) {
				t.Errorf("log lacks %q", want)
			}
		}
	})

	t.Run("hostlist expansion", func(t *testing.T) {
		// Several arguments, comma lists, zero padding, two brackets.
		code, lines := a.run(t, "n[08-10,3]", "r[1-2]-c[1-2],solo")
		if code != 1 { // none of them exists
			t.Errorf("exit %d, want 1", code)
		}
		want := "n08 n09 n10 n3 r1-c1 r1-c2 r2-c1 r2-c2 solo"
		if got := strings.Join(tried(lines), " "); got != want {
			t.Errorf("evacuated %q, want %q", got, want)
		}
	})

	t.Run("bad hostlist", func(t *testing.T) {
		for _, bad := range []string{"node[3-1]", "node[1-", "node]", "node[a-b]"} {
			code, lines := a.run(t, "node1", bad)
			if code != 2 {
				t.Errorf("%q: exit %d, want 2", bad, code)
			}
			if len(tried(lines)) != 0 {
				t.Errorf("%q: evacuated %v before seeing the bad list", bad, tried(lines))
			}
		}
		if code, _ := a.run(t); code != 2 {
			t.Errorf("no arguments: exit %d, want 2", code)
		}
	})

	t.Run("syslog", func(t *testing.T) {
		b, err := os.ReadFile(a.syslog)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "-t symvirt -- node node1: evacuated") {
			t.Errorf("syslog got no outcome with tag symvirt:\n%s", b)
		}
	})
}

// TestNodeAlertOutcomePerVM: the per-VM log lines and the exit status from
// an evacuation's result. Unlike TestNodeAlert this one replaces symvirt:
// a stand-in prints what "symvirt evacuate --output json" prints, made
// here from the coordinator's own result type (so a change of its JSON
// breaks this test), for one job migrated and one aborted; a real
// evacuation of running VMs through this script is the MPI end-to-end
// test's.
func TestNodeAlertOutcomePerVM(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		t.Skip("skipping: jq not found (scripts/deps installs it)")
	}
	dir := t.TempDir()
	results := map[string][]machine.Result{
		"good": {{Kind: machine.KindEvacuate, Job: "j1", Done: true, Committed: true, Outcome: machine.OutcomeMigrated,
			VMs: []machine.VMResult{{Name: "vm1", Host: "node2", Outcome: machine.OutcomeMigrated},
				{Name: "vm2", Host: "node3", Outcome: machine.OutcomeMigrated}}}},
		"bad": {{Kind: machine.KindEvacuate, Job: "j2", Done: true, Outcome: machine.OutcomeAborted,
			Reason: "vm b: prepare: refused",
			VMs:    []machine.VMResult{{Name: "b", Host: "bad", Outcome: machine.OutcomeAborted, Error: "refused by the guest"}}}},
	}
	for host, res := range results {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, host+".json"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The stand-in: "evacuate --output json -- HOST"; exit 1 when the
	// operation was aborted, as symvirt does.
	fake := filepath.Join(dir, "symvirt")
	script := "#!/bin/sh\nfor h; do :; done\ncat " + dir + "/$h.json\n[ \"$h\" = good ]\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	a := newAlertEnv(t, "/nonexistent")
	a.env = append(a.env, "SYMVIRT="+fake)

	code, lines := a.run(t, "good")
	if code != 0 {
		t.Errorf("good: exit %d, want 0", code)
	}
	for _, want := range []string{"node good: job=j1 vm=vm1 host=node2 outcome=migrated",
		"node good: job=j1 vm=vm2 host=node3 outcome=migrated", "node good: evacuated"} {
		if !contains(lines, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	code, lines = a.run(t, "good,bad")
	if code != 1 {
		t.Errorf("good,bad: exit %d, want 1", code)
	}
	for _, want := range []string{"node bad: job=j2 vm=b host=bad outcome=aborted error=refused by the guest",
		"node bad: NOT evacuated", "done: NOT evacuated: bad"} {
		if !contains(lines, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// TestNodeAlertEvacuatesVM: a real evacuation through the script: a job of
// one VM (the busybox test guest under QEMU) on node1, a node alert for
// "node[1]"; the VM must end up on node2 and the log must say so per VM.
func TestNodeAlertEvacuatesVM(t *testing.T) {
	testenv.RequireRoot(t)
	kernel, initrd := testguest.Paths(t)
	coord := testenv.StartCoord(t, nil, t.TempDir(), nil)
	for _, name := range []string{"node1", "node2"} {
		h := testenv.StartHostd(t, name, nil, "", "", "--guest-timeout", "20s")
		if out, err := coord.CLI(t, "hosts", "add", name, h.Socket()); err != nil {
			t.Fatalf("hosts add %s: %v\n%s", name, err, out)
		}
	}
	job := filepath.Join(t.TempDir(), "job.yaml")
	yaml := "name: j1\nvms:\n  - name: vm1\n    host: node1\n    spec:\n      memory: 256M\n" +
		"      kernel: " + kernel + "\n      initrd: " + initrd + "\n" +
		"      append: \"console=ttyS0 quiet panic=-1 symvirt.agent=1\"\n" +
		"      guest_channel: {type: virtio-serial}\n"
	if err := os.WriteFile(job, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := coord.CLI(t, "jobs", "create", "-f", job); err != nil {
		t.Fatalf("jobs create: %v\n%s", err, out)
	}
	a := newAlertEnv(t, coord.Socket())
	code, lines := a.run(t, "node[1]")
	if code != 0 {
		t.Errorf("exit %d, want 0", code)
	}
	for _, want := range []string{"node node1: job=j1 vm=vm1 host=node2 outcome=migrated", "node node1: evacuated"} {
		if !contains(lines, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	out, err := coord.CLI(t, "jobs", "--output", "json")
	if err != nil {
		t.Fatalf("jobs: %v\n%s", err, out)
	}
	var jobs []struct {
		VMs []struct{ Name, Host string } `json:"vms"`
	}
	if err := json.Unmarshal([]byte(out), &jobs); err != nil {
		t.Fatalf("jobs: %v\n%s", err, out)
	}
	if len(jobs) != 1 || len(jobs[0].VMs) != 1 || jobs[0].VMs[0].Host != "node2" {
		t.Errorf("after the alert the coordinator has %s", out)
	}
}

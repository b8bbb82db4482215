package mpi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testenv"
)

// The run: 4096 points, 600 iterations, 20 ms of sleep per iteration so
// that the run lasts; it holds at iteration 500 until the test touches
// holdFile, so that every operation happens before the end.
var jacobiArgs = []string{"-n", "4096", "-i", "600"}

const (
	holdFile = "/home/mpi/go"
	ranks    = 4
)

// TestMPIJobThroughOperations runs examples/mpi as a 4-rank job over two
// Debian VMs (2 ranks each, user mpi, mpirun over ssh) through a live
// checkpoint, the death of every VM, a restart from the checkpoint, the
// migration of one VM and the evacuation of a host; the final checksum must
// equal an undisturbed run's (the same binary under mpirun on the test
// host). The pauses each rank saw are logged and written, as JSON, to
// build/mpi-e2e/pauses.json. Every step is a symvirt or ssh command line,
// logged as it runs: scripts/demo can replay them.
//
// The VMs boot from RAM (initrd.img: the whole guest is in its checkpoint).
// SYMVIRT_MPI_BOOT=disk boots them from qcow2 overlays instead; that run
// gets through the restart and the migration but not the evacuation back
// to host b: a restored VM's disk is a copy in the restoring hostd's state
// dir (vms/NAME/disk-root.qcow2), a migration keeps that path, and it is
// gone from b once the VM left b.
func TestMPIJobThroughOperations(t *testing.T) {
	c := newCluster(t)
	want := undisturbedChecksum(t)
	job := filepath.Join(t.TempDir(), "job.yaml")
	fromDisk := os.Getenv("SYMVIRT_MPI_BOOT") == "disk"
	os.WriteFile(job, []byte(c.jobYAML("mpi", fromDisk, "a", "b")), 0o600)
	booted := time.Now()
	c.cli("jobs", "create", "-f", job)
	for vm, h := range c.where("mpi") {
		c.waitSerial(h, vm, "symvirt-guest-ready", 4*time.Minute)
	}
	t.Logf("both VMs ready %.0fs after jobs create (from disk: %v)", time.Since(booted).Seconds(), fromDisk)
	g := &guestJob{c: c, ip: vmIP(1)}
	// The ranks are not root; guestd lets group mpi use its hook socket.
	if out := g.run("id -un; stat -c '%U:%G %a' /run/symvirt/hook.sock"); out != "mpi\nroot:mpi 660\n" {
		t.Fatalf("guest user and hook socket: %q, want mpi and root:mpi 660", out)
	}
	g.start(fmt.Sprintf("%s:2,%s:2", vmIP(1), vmIP(2)))
	g.waitIter(50)

	res := c.op("checkpoint", "mpi")
	if res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint not complete: %+v", res)
	}
	g.waitProgress()

	c.killAll("mpi")
	// Away for a while: a restored guest must not have lost this time.
	const away = 5 * time.Second
	time.Sleep(away)
	if res := c.op("restart", "mpi", "--checkpoint", res.CheckpointID); res.Outcome != machine.OutcomeRestored {
		t.Fatalf("restart: %+v", res)
	}
	g.checkClock()
	g.waitProgress()

	if res := c.op("migrate", "vm2", "--to", "c"); res.Outcome != machine.OutcomeMigrated {
		t.Fatalf("migrate: %+v", res)
	}
	if w := c.where("mpi"); w["vm2"] != "c" {
		t.Fatalf("after migrate vm2 is on %s", w["vm2"])
	}
	g.waitProgress()

	c.nodeAlert("c")
	if w := c.where("mpi"); w["vm2"] == "c" {
		t.Fatalf("after evacuate vm2 is still on c: %v", w)
	}
	g.waitProgress()

	out := g.finish()
	got := checksum(t, out)
	checkRestoredPauses(t, reportPauses(t, out), away)
	if got != want {
		t.Fatalf("final checksum %s, undisturbed run %s", got, want)
	}
	t.Logf("final checksum %s = undisturbed run's", got)
}

// nodeAlert reports host as failing through scripts/symvirt-node-alert,
// as Slurm's strigger would: every VM must leave it.
func (c *cluster) nodeAlert(host string) {
	c.t.Helper()
	dir := c.t.TempDir()
	script := filepath.Join(testenv.RepoRoot(c.t), "scripts", "symvirt-node-alert")
	cmd := exec.Command("sh", script, host)
	cmd.Env = append(os.Environ(), "SYMVIRT="+testenv.Binary(c.t), "SYMVIRT_COORD="+c.coord.Socket(),
		"SYMVIRT_NODE_ALERT_LOG="+filepath.Join(dir, "node-alert.log"), "SYMVIRT_NODE_ALERT_LOGGER=",
		"SYMVIRT_NODE_ALERT_SCONTROL=", "SYMVIRT_NODE_ALERT_CONF=/nonexistent")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	log, _ := os.ReadFile(filepath.Join(dir, "node-alert.log"))
	if err != nil {
		c.dumpGuests()
		c.t.Fatalf("symvirt-node-alert %s: %v\n%s%s", host, err, out, log)
	}
	c.t.Logf("symvirt-node-alert %s in %.1fs:\n%s", host, time.Since(start).Seconds(), log)
}

// guestJob is the MPI run, driven over ssh in the guest holding rank 0.
type guestJob struct {
	c     *cluster
	ip    string
	lines int // output lines last seen
}

func (g *guestJob) run(command string) string {
	g.c.t.Helper()
	out, err := g.c.ssh(g.ip, 60*time.Second, command)
	if err != nil {
		g.c.dumpGuests()
		g.c.t.Fatalf("ssh mpi@%s %q: %v\n%s", g.ip, command, err, out)
	}
	return out
}

func (g *guestJob) start(hosts string) {
	cmd := fmt.Sprintf("jacobi-job %s %d %s -d 20 -H 500 -f %s", hosts, ranks, strings.Join(jacobiArgs, " "), holdFile)
	g.c.t.Logf("ssh mpi@%s %s", g.ip, cmd)
	g.run(cmd)
}

var iterRE = regexp.MustCompile(`jacobi-iter (\d+)`)

// waitIter waits until rank 0 reported iteration n.
func (g *guestJob) waitIter(n int) {
	g.c.t.Helper()
	g.wait(fmt.Sprintf("iteration %d", n), func(out string) bool {
		m := iterRE.FindAllStringSubmatch(out, -1)
		if len(m) == 0 {
			return false
		}
		it, _ := strconv.Atoi(m[len(m)-1][1])
		return it >= n
	})
}

// waitProgress waits until the run printed two more lines (iterations, or
// rounds of holding: either needs every rank to take part).
func (g *guestJob) waitProgress() {
	g.c.t.Helper()
	since := g.lines
	g.wait("progress", func(out string) bool { return strings.Count(out, "\n") >= since+2 })
}

func (g *guestJob) wait(what string, done func(string) bool) {
	g.c.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out := g.run("cat jacobi.out")
		g.lines = strings.Count(out, "\n")
		if done(out) {
			return
		}
		if strings.Contains(out, "jacobi-done") || strings.Contains(out, "ORTE") ||
			strings.Contains(out, "MPI_ABORT") || time.Now().After(deadline) {
			g.c.dumpGuests()
			g.c.t.Fatalf("waiting for %s of the MPI run:\n%s", what, tail(out, 4000))
		}
		time.Sleep(time.Second)
	}
}

// finish lets the run end and returns its output.
func (g *guestJob) finish() string {
	g.run("touch " + holdFile)
	g.wait("the end", func(out string) bool { return strings.Contains(out, "jacobi-done") })
	return g.run("cat jacobi.out")
}

// checkClock: the restored guest's clock is within 1 s of the host's.
func (g *guestJob) checkClock() {
	g.c.t.Helper()
	before := time.Now()
	out := g.run("date +%s.%N")
	after := time.Now()
	sec, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		g.c.t.Fatalf("guest date: %q", out)
	}
	guest := time.Unix(0, int64(sec*1e9))
	off := 0.0
	if guest.Before(before) {
		off = guest.Sub(before).Seconds()
	} else if guest.After(after) {
		off = guest.Sub(after).Seconds()
	}
	g.c.t.Logf("guest clock after restore: %+.3fs off the host's (ssh took %.2fs)", off, after.Sub(before).Seconds())
	if math.Abs(off) > 1 {
		g.c.t.Errorf("the restored guest's clock is %+.1fs off the host's", off)
	}
}

var checksumRE = regexp.MustCompile(`jacobi-checksum ([0-9a-f]{16})`)

func checksum(t *testing.T, out string) string {
	t.Helper()
	m := checksumRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no checksum in the output:\n%s", tail(out, 3000))
	}
	return m[1]
}

// undisturbedChecksum runs the same binary on the test host, without an
// agent (the hook is then a no-op).
func undisturbedChecksum(t *testing.T) string {
	dir := filepath.Join(testenv.RepoRoot(t), "examples", "mpi")
	if out, err := exec.Command("make", "-s", "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("make -C examples/mpi: %v\n%s", err, out)
	}
	bin := filepath.Join(dir, "jacobi")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--allow-run-as-root", "--oversubscribe", "-np", strconv.Itoa(ranks), bin}, jacobiArgs...)
	cmd := exec.CommandContext(ctx, "mpirun", args...)
	cmd.Env = append(os.Environ(), "SYMVIRT_HOOK_SOCKET=/nonexistent/hook.sock")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mpirun %v: %v\n%s", args, err, out)
	}
	sum := checksum(t, string(out))
	t.Logf("undisturbed run (mpirun -np %d on the test host): checksum %s", ranks, sum)
	return sum
}

// rankReport is one rank's "jacobi-pauses" line.
type rankReport struct {
	Rank       int    `json:"rank"`
	Host       string `json:"host"`
	Iterations int    `json:"iterations"`
	Pauses     []struct {
		Iter    int     `json:"iter"`
		At      float64 `json:"at"`
		Seconds float64 `json:"seconds"`
		Op      string  `json:"op"`
		Outcome string  `json:"outcome"`
	} `json:"pauses"`
}

// checkRestoredPauses: every rank synced at the checkpoint (as user mpi)
// and, restored from it, measured at least the time its VM was away (the
// guest clock was stepped to the host's).
func checkRestoredPauses(t *testing.T, reports []rankReport, away time.Duration) {
	for _, r := range reports {
		restored := false
		for _, p := range r.Pauses {
			if p.Op == "checkpoint" && p.Outcome == "restored" {
				restored = true
				if p.Seconds < away.Seconds() {
					t.Errorf("rank %d: restored after %.2fs away by its clock, the VMs were gone %v", r.Rank, p.Seconds, away)
				}
			}
		}
		if !restored {
			t.Errorf("rank %d never returned from its checkpoint sync as restored: %+v", r.Rank, r.Pauses)
		}
	}
}

// reportPauses logs the pauses every rank saw and writes them to
// build/mpi-e2e/pauses.json.
func reportPauses(t *testing.T, out string) []rankReport {
	var reports []rankReport
	for _, l := range strings.Split(out, "\n") {
		js, ok := strings.CutPrefix(strings.TrimSpace(l), "jacobi-pauses ")
		if !ok {
			continue
		}
		var r rankReport
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			t.Fatalf("rank report %q: %v", js, err)
		}
		reports = append(reports, r)
		for _, p := range r.Pauses {
			t.Logf("rank %d (%s) iteration %d: paused %.2fs at %s %s %s", r.Rank, r.Host, p.Iter, p.Seconds,
				time.Unix(0, int64(p.At*1e9)).UTC().Format("15:04:05.000"), p.Op, p.Outcome)
		}
	}
	if len(reports) != ranks {
		t.Fatalf("%d rank reports, want %d:\n%s", len(reports), ranks, tail(out, 3000))
	}
	data, _ := json.MarshalIndent(reports, "", "  ")
	dir := filepath.Join(testenv.RepoRoot(t), "build", "mpi-e2e")
	os.MkdirAll(dir, 0o755)
	f := filepath.Join(dir, "pauses.json")
	if err := os.WriteFile(f, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("pauses: %s", f)
	return reports
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func killPID(pid int) { syscall.Kill(pid, syscall.SIGKILL) }

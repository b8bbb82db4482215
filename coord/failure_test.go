package coord_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// Every failure test injects a real fault (a frozen guest application,
// kill -9 of a hostd or of the coordinator, a full tmpfs) into a real job
// on real QEMU, and checks that nothing is left paused or half-done.

var onePeer = []string{"10.79.0.12"}

// opResult is the outcome of an operation run in the background.
type opResult struct {
	res machine.Result
	out string
	err error
}

// opAsync runs an operation in the background, so a test can inject a
// fault while it runs.
func (c *cluster) opAsync(args ...string) <-chan opResult {
	done := make(chan opResult, 1)
	go func() {
		r, out, err := c.op(args...)
		done <- opResult{r, out, err}
	}()
	return done
}

// startJob creates a 2-VM job (vm1 on a, vm2 on b) with guest options and
// waits until vm1 talks to vm2.
func startJob(t *testing.T, c *cluster, extra string) map[string]int {
	c.createJobWith("jf", extra, "a", "b")
	c.where("jf") // remembered for when the coordinator is down
	return c.waitTraffic("jf", "a", onePeer, map[string]int{})
}

// assertUntouched checks that every VM of the job runs, with its
// passthrough NIC present and nothing detached, where the coordinator
// says it is, and that vm1's connection goes on.
func assertUntouched(t *testing.T, c *cluster, since map[string]int, skip ...string) {
	t.Helper()
	for vm, host := range c.where("jf") {
		if slices.Contains(skip, vm) {
			continue
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			st, err := c.hosts[host].Client().Status(ctxT(t, 10*time.Second), vm)
			if err == nil && st.State == "running" && len(st.Detached) == 0 && slices.Contains(st.Present, "pt0") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s on %s is not running as before: %+v %v", vm, host, st, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	c.waitTraffic("jf", "a", onePeer, since)
}

func checkpointStatus(t *testing.T, c *cluster, id string) string {
	out := c.cli("checkpoints", "show", id)
	for _, s := range []string{"complete", "failed", "in-progress"} {
		if strings.Contains(out, ", "+s+",") {
			return s
		}
	}
	t.Fatalf("checkpoint %s: %s", id, out)
	return ""
}

func TestGuestNotReadyAbortsJob(t *testing.T) {
	c := newCluster(t)
	since := startJob(t, c, " symvirt.stuck=1")
	waitFile(t, c.serial("a", "vm1"), `hook frozen`)
	res, out, err := c.op("checkpoint", "jf")
	if err == nil || res.Outcome != machine.OutcomeAborted || res.Checkpoint != machine.CheckpointFailed {
		t.Fatalf("checkpoint with a guest that never gets ready: %v\n%s", err, out)
	}
	if !strings.Contains(out, "did not reach a safe point") {
		t.Fatalf("the reason does not say why:\n%s", out)
	}
	assertUntouched(t, c, since)
	if entries, _ := os.ReadDir(filepath.Join(c.ckDir, res.CheckpointID)); len(entries) != 0 {
		t.Fatalf("a failed checkpoint left files: %v", entries)
	}
	if s := checkpointStatus(t, c, res.CheckpointID); s != "failed" {
		t.Fatalf("checkpoint recorded %s", s)
	}
}

func TestHostdDiesMidCheckpoint(t *testing.T) {
	c := newCluster(t)
	since := startJob(t, c, " symvirt.slow=1")
	done := c.opAsync("checkpoint", "jf")
	// The guests' prepare hooks take 6 s: hostd b dies in the middle.
	waitFile(t, c.serial("b", "vm2"), `"PREPARE"`)
	c.hosts["b"].Kill()
	r := <-done
	if r.err == nil || r.res.Checkpoint != machine.CheckpointFailed || !slices.Contains(r.res.Lost, "vm2") {
		t.Fatalf("checkpoint with a dead hostd: %v\n%s", r.err, r.out)
	}
	assertUntouched(t, c, since, "vm2")
	// The dead host's VM never depended on hostd: it still runs, and is
	// managed again once hostd is back.
	c.hosts["b"].Start()
	st, err := c.hosts["b"].Client().Status(ctxT(t, 10*time.Second), "vm2")
	if err != nil || st.State != "running" {
		t.Fatalf("vm2 after hostd b came back: %+v %v", st, err)
	}
}

func TestMigrationDestinationDies(t *testing.T) {
	c := newCluster(t)
	since := startJob(t, c, " symvirt.slow=1")
	done := c.opAsync("migrate", "vm2", "--to", "c")
	waitFile(t, c.serial("b", "vm2"), `"PREPARE"`)
	c.hosts["c"].Kill()
	r := <-done
	if r.err == nil || r.res.Outcome != machine.OutcomeAborted {
		t.Fatalf("migration to a dead destination: %v\n%s", r.err, r.out)
	}
	if w := c.where("jf"); w["vm2"] != "b" {
		t.Fatalf("vm2 is recorded on %s", w["vm2"])
	}
	assertUntouched(t, c, since)
}

func TestCheckpointOnFullDisk(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	c := newClusterWith(t, clusterOpts{ckDir: dir})
	since := startJob(t, c, "")
	res, out, err := c.op("checkpoint", "jf")
	if err == nil || res.Checkpoint != machine.CheckpointFailed {
		t.Fatalf("checkpoint onto a full disk: %v\n%s", err, out)
	}
	if !strings.Contains(strings.ToLower(out), "no space left") {
		t.Fatalf("the reason does not say the disk is full:\n%s", out)
	}
	assertUntouched(t, c, since)
	if entries, _ := os.ReadDir(filepath.Join(dir, res.CheckpointID)); len(entries) != 0 {
		t.Fatalf("partial files left: %v", entries)
	}
}

// The coordinator dies at a known instant and comes back: it finishes the
// checkpoint, and then frees the job for the next operation. Live: every
// VM detached and fenced, about to take its snapshot point; stop-and-save:
// every VM detached and stopped, about to save.
func TestCoordCrashThenRecovers(t *testing.T) {
	for _, tc := range []struct{ name, phase, live string }{{"live", "point", "--live=true"}, {"stop-and-save", "save", "--live=false"}} {
		t.Run(tc.name, func(t *testing.T) { testCrashThenRecovers(t, tc.phase, tc.live) })
	}
}

func testCrashThenRecovers(t *testing.T, phase, live string) {
	c := newClusterWith(t, clusterOpts{coordEnv: []string{"SYMVIRT_COORD_CRASH_AT=" + phase}})
	since := startJob(t, c, "")
	if _, out, err := c.op("checkpoint", "jf", live); err == nil {
		t.Fatalf("the coordinator should have died mid-operation:\n%s", out)
	}
	waitExited(t, c)
	c.coord.Env = nil
	c.coord.Start()
	id := waitCheckpoint(t, c, "complete")
	t.Logf("recovered checkpoint %s complete", id)
	assertUntouched(t, c, since)
	for vm, host := range c.where("jf") {
		waitFile(t, c.serial(host, vm), `hook: outcome checkpointed`)
	}
	// The recovered operation ends right after its last step: the job is
	// busy until then, not for ever.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, out, err := c.op("checkpoint", "jf", live)
		if err == nil && res.Checkpoint == machine.CheckpointComplete {
			break
		}
		if !strings.Contains(out, "in progress") || time.Now().After(deadline) {
			t.Fatalf("a checkpoint after the recovered one: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	assertUntouched(t, c, c.traffic("a"))
}

// The coordinator dies in a live checkpoint with the job detached and
// fenced, and stays away: every hostd gives its VMs back (devices, network)
// when the lease runs out, and the coordinator, back later, rolls the
// operation back (the hostds refuse its forward steps from then on).
func TestCoordGoneLeaseResumesVMs(t *testing.T) {
	c := newClusterWith(t, clusterOpts{coordEnv: []string{"SYMVIRT_COORD_CRASH_AT=point"}})
	since := startJob(t, c, "")
	c.op("checkpoint", "jf")
	waitExited(t, c)
	// Paused now; the 8 s lease expires and the hostds undo the operation.
	for vm, host := range c.where("jf") {
		waitFile(t, c.serial(host, vm), `hook: outcome aborted`)
	}
	assertUntouched(t, c, since)
	c.coord.Env = nil
	c.coord.Start()
	waitCheckpoint(t, c, "failed")
	assertUntouched(t, c, c.traffic("a"))
}

func waitExited(t *testing.T, c *cluster) {
	deadline := time.Now().Add(60 * time.Second)
	for !c.coord.Exited() {
		if time.Now().After(deadline) {
			t.Fatal("the coordinator did not reach its crash point")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitCheckpoint(t *testing.T, c *cluster, status string) string {
	deadline := time.Now().Add(90 * time.Second)
	for {
		out := c.cli("checkpoints", "list")
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[1] == "jf" && f[2] == status {
				return f[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s checkpoint of jf:\n%s", status, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// A QEMU killed while its live checkpoint still streams: the checkpoint
// fails and its files go; the rest of the job runs on untouched.
func TestLiveCheckpointQEMUKilledMidStream(t *testing.T) {
	c := newCluster(t)
	startJob(t, c, "")
	// 8 MB/s: a stream of ~110 MB takes long enough to kill into.
	done := c.opAsync("checkpoint", "jf", "--live", "--bandwidth", "8M")
	state := waitStreaming(t, c, "b", "vm2")
	// vm1 runs during the stream: the job is not paused for it.
	if st, err := c.hosts["a"].Client().Status(ctxT(t, 10*time.Second), "vm1"); err != nil || st.State != "running" {
		t.Fatalf("vm1 while streaming: %+v %v", st, err)
	}
	st, err := c.hosts["b"].Client().Status(ctxT(t, 10*time.Second), "vm2")
	if err != nil || st.PID == 0 {
		t.Fatalf("vm2: %+v %v", st, err)
	}
	syscallKill(st.PID)
	r := <-done
	if r.err == nil || r.res.Checkpoint != machine.CheckpointFailed {
		t.Fatalf("live checkpoint with a QEMU killed mid-stream: %v\n%s", r.err, r.out)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(state)), "*", "*")); len(m) != 0 {
		t.Fatalf("partial files left: %v", m)
	}
	if s := checkpointStatus(t, c, r.res.CheckpointID); s != "failed" {
		t.Fatalf("checkpoint recorded %s", s)
	}
	st, err = c.hosts["a"].Client().Status(ctxT(t, 10*time.Second), "vm1")
	if err != nil || st.State != "running" || len(st.Detached) != 0 {
		t.Fatalf("vm1 after the failed live checkpoint: %+v %v", st, err)
	}
}

// waitStreaming waits until vm's live checkpoint on host streams its
// memory while the VM runs (a background snapshot past its point; a
// precopy under way) and returns the state file.
func waitStreaming(t *testing.T, c *cluster, host, vm string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		logs := c.hosts[host].Logs()
		if strings.Contains(logs, `"msg":"snapshot point taken","vm":"`+vm+`"`) {
			break
		}
		if strings.Contains(logs, `"msg":"live checkpoint copy started","vm":"`+vm+`"`) {
			time.Sleep(500 * time.Millisecond) // some of it written
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the live stream never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	m, _ := filepath.Glob(filepath.Join(c.ckDir, "*", vm, "state.bin"))
	if len(m) != 1 {
		t.Fatalf("state files: %v", m)
	}
	return m[0]
}

// hostd b dies (kill -9) while vm2's memory streams, and is back a moment
// later. The stream was QEMU's own (into a file), so the guest never
// noticed; the checkpoint is failed (no hostd saw it complete), its files
// are gone on both hosts, both VMs run with their devices and their
// connection, and the next live checkpoint works.
//
// Both ways of copying a running VM: QEMU's background snapshot (written
// by QEMU into the file: it finishes on its own) and the precopy (through
// a pipe into hostd: it breaks, QEMU fails it and the VM runs on).
func TestLiveCheckpointHostdKilledMidStream(t *testing.T) {
	for _, mode := range []string{"snapshot", "precopy"} {
		t.Run(mode, func(t *testing.T) { testHostdKilledMidStream(t, mode) })
	}
}

func testHostdKilledMidStream(t *testing.T, mode string) {
	yaml := "live_mode: " + mode + "\n"
	c := newClusterWith(t, clusterOpts{hostdYAML: map[string]string{"a": yaml, "b": yaml}})
	since := startJob(t, c, "")
	done := c.opAsync("checkpoint", "jf", "--live", "--bandwidth", "8M")
	state := waitStreaming(t, c, "b", "vm2")
	c.hosts["b"].Kill()
	time.Sleep(500 * time.Millisecond)
	c.hosts["b"].Start()
	r := <-done
	if r.err == nil || r.res.Checkpoint != machine.CheckpointFailed {
		t.Fatalf("live checkpoint whose hostd died mid-stream: %v\n%s", r.err, r.out)
	}
	t.Logf("reason: %s", r.res.Reason)
	assertUntouched(t, c, since)
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(state)), "*", "*")); len(m) != 0 {
		t.Fatalf("partial files left: %v", m)
	}
	if s := checkpointStatus(t, c, r.res.CheckpointID); s != "failed" {
		t.Fatalf("checkpoint recorded %s", s)
	}
	if res, out, err := c.op("checkpoint", "jf"); err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("the next checkpoint: %v\n%s", err, out)
	}
}

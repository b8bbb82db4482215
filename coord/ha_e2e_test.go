package coord_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testetcd"
)

// haCluster is the e2e cluster with three coordinator replicas sharing a
// real 3-member etcd cluster (in the management namespace): reps[0] is
// the first leader (started alone, with leaderEnv), the others follow.
type haCluster struct {
	*cluster
	etcd *testetcd.Cluster
	reps []*testenv.Coord
}

// newHACluster starts the cluster; the session TTL is 2 s.
func newHACluster(t *testing.T, leaderEnv ...string) *haCluster {
	h := &haCluster{}
	h.cluster = newClusterWith(t, clusterOpts{coordEnv: leaderEnv, beforeCoord: func(mgmt *testenv.NetNS) []string {
		h.etcd = testetcd.Start(t, mgmt.Name, 3, 23790)
		return []string{"--etcd", h.etcd.Endpoints(), "--etcd-insecure-http", "--etcd-ttl", "2s"}
	}})
	h.reps = []*testenv.Coord{h.coord}
	for i := 1; i < 3; i++ {
		h.reps = append(h.reps, testenv.StartCoordReplica(t, h.coord.NS, fmt.Sprintf("coord%d", i), h.ckDir, nil,
			h.coord.Extra...))
	}
	st := h.status(t)
	if st.Leader != h.reps[0].Socket() || len(st.Replicas) != 3 {
		t.Fatalf("replica set at start: %+v, want 3 replicas led by %s", st, h.reps[0].Socket())
	}
	return h
}

// all is the CLI's replica list: every replica's socket.
func (h *haCluster) all() string {
	var s []string
	for _, r := range h.reps {
		s = append(s, r.Socket())
	}
	return strings.Join(s, ",")
}

// cliAll runs symvirt with the whole replica list: it finds the leader.
func (h *haCluster) cliAll(args ...string) (string, error) {
	cmd := exec.Command(testenv.Binary(h.t), args...)
	cmd.Env = append(os.Environ(), "SYMVIRT_COORD="+h.all())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// status is "symvirt coord status" asked of the replica list.
func (h *haCluster) status(t *testing.T) coord.HAStatus {
	out, err := h.cliAll("coord", "status", "--output", "json")
	var st coord.HAStatus
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("coord status: %v\n%s", err, out)
	}
	return st
}

// newLeader waits until a replica other than old leads, makes it the
// cluster's coordinator (c.cli and friends talk to it) and returns it with
// its epoch.
func (h *haCluster) newLeader(t *testing.T, old *testenv.Coord, oldEpoch int64) (*testenv.Coord, int64) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := h.status(t)
		for _, r := range h.reps {
			if r != old && st.Leader == r.Socket() && st.Epoch > oldEpoch {
				h.coord = r
				t.Logf("new leader %s, epoch %d (was %d)", r.Name, st.Epoch, oldEpoch)
				return r, st.Epoch
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new leader: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// assertOnce checks that each VM of job jf runs on exactly one host.
func (h *haCluster) assertOnce(t *testing.T) {
	t.Helper()
	where := map[string][]string{}
	for name, hd := range h.hosts {
		vms, err := hd.Client().List(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatalf("host %s: %v", name, err)
		}
		for _, v := range vms {
			if v.State == "running" {
				where[v.Name] = append(where[v.Name], name)
			}
		}
	}
	for _, vm := range []string{"vm1", "vm2"} {
		if len(where[vm]) != 1 {
			t.Fatalf("%s runs on %v, want exactly one host", vm, where[vm])
		}
	}
}

// The leader is killed (kill -9 at a known instant: its crash point, right
// after journaling the phase) in a checkpoint of a 2-VM job: another
// replica is elected within the session TTL, resumes the operation from
// the journal in etcd and finishes it or rolls it back, as a restarted
// coordinator does; the VMs run exactly once, the checkpoint is complete
// (its files there, and the job restarts from it) or failed (its files
// gone, and the next checkpoint completes). The CLI, given all three
// replicas' addresses, finds the new leader.
func TestHACoordLeaderKilledMidCheckpoint(t *testing.T) {
	for _, tc := range []struct{ phase, live string }{
		{"prepare", "--live=false"}, {"detach", "--live=false"}, {"stop", "--live=false"}, {"save", "--live=false"},
		{"resume", "--live=false"}, {"arm", "--live=true"}, {"point", "--live=true"},
	} {
		t.Run(tc.phase, func(t *testing.T) { testHAKilledMidCheckpoint(t, tc.phase, tc.live) })
	}
}

func testHAKilledMidCheckpoint(t *testing.T, phase, live string) {
	h := newHACluster(t, "SYMVIRT_COORD_CRASH_AT="+phase)
	epoch := h.status(t).Epoch
	since := startJob(t, h.cluster, "")
	if _, out, err := h.op("checkpoint", "jf", live); err == nil {
		t.Fatalf("the leader should have died mid-operation:\n%s", out)
	}
	waitExited(t, h.cluster)
	old := h.coord
	h.newLeader(t, old, epoch)
	// The job's checkpoint ends complete or failed (never in progress).
	var id, status string
	deadline := time.Now().Add(120 * time.Second)
	for status == "" || status == "in-progress" {
		if time.Now().After(deadline) {
			t.Fatalf("the checkpoint is still %q", status)
		}
		time.Sleep(500 * time.Millisecond)
		out, err := h.cliAll("checkpoints", "list")
		if err != nil {
			t.Fatalf("checkpoints list through the replica list: %v\n%s", err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[1] == "jf" {
				id, status = f[0], f[2]
			}
		}
	}
	t.Logf("checkpoint %s %s after the leader died at %s", id, status, phase)
	if (phase == "save" || phase == "point" || phase == "resume") && status != "complete" {
		t.Fatalf("a checkpoint past its barrier should complete, it is %s", status)
	}
	files, _ := os.ReadDir(filepath.Join(h.ckDir, id))
	switch status {
	case "complete":
		for vm, host := range h.where("jf") {
			waitFile(t, h.serial(host, vm), `hook: outcome checkpointed`)
		}
		if len(files) != 2 {
			t.Fatalf("a complete checkpoint of 2 VMs has %d directories", len(files))
		}
	case "failed":
		if len(files) != 0 {
			t.Fatalf("a failed checkpoint left files: %v", files)
		}
	}
	h.assertOnce(t)
	assertUntouched(t, h.cluster, since)
	if !strings.Contains(h.hosts["a"].Logs(), `"msg":"new coordinator epoch"`) {
		t.Fatalf("hostd a never saw the new leader's epoch")
	}
	if status == "failed" {
		// The job is free again: the next checkpoint completes.
		waitNextCheckpoint(t, h, live)
		return
	}
	// The recovered checkpoint restores: the job's VMs killed, the job
	// restarts from it (once the recovered operation freed the job).
	h.killAll("jf")
	deadline = time.Now().Add(60 * time.Second)
	for {
		res, out, err := h.op("restart", "jf", "--checkpoint", id)
		if err == nil && res.Outcome == machine.OutcomeRestored {
			break
		}
		if !strings.Contains(out, "in progress") || time.Now().After(deadline) {
			t.Fatalf("restart from the recovered checkpoint: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	h.assertOnce(t)
}

// waitNextCheckpoint retries a checkpoint while the recovered operation
// still holds the job.
func waitNextCheckpoint(t *testing.T, h *haCluster, live string) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		res, out, err := h.op("checkpoint", "jf", live)
		if err == nil && res.Checkpoint == machine.CheckpointComplete {
			return
		}
		if !strings.Contains(out, "in progress") || time.Now().After(deadline) {
			t.Fatalf("a checkpoint after the recovered one: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
}

// The leader pauses itself (SIGSTOP) right after journaling a checkpoint's
// prepare phase, before sending the prepare steps. Its session runs out,
// another replica is elected and finishes the operation from the journal.
// Then the old leader is woken (SIGCONT): the prepare steps it now sends
// carry its old epoch and every hostd refuses them (stale_epoch, logged
// and counted), nothing it writes reaches the store, and it stops.
func TestHACoordPausedLeaderIsFenced(t *testing.T) {
	h := newHACluster(t, "SYMVIRT_COORD_STOP_AT=prepare")
	epoch := h.status(t).Epoch
	since := startJob(t, h.cluster, "")
	old := h.coord
	done := h.opAsync("checkpoint", "jf", "--live=false")
	deadline := time.Now().Add(60 * time.Second)
	for !old.Stopped() {
		if time.Now().After(deadline) {
			t.Fatal("the leader did not reach its stop point")
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, newEpoch := h.newLeader(t, old, epoch)
	id := waitCheckpoint(t, h.cluster, "complete")
	t.Logf("the new leader completed checkpoint %s", id)
	before := h.opsOf(t)

	old.Signal(syscall.SIGCONT)
	deadline = time.Now().Add(30 * time.Second)
	for !old.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("the woken old leader did not stop:\n%s", old.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := <-done
	t.Logf("the old leader's checkpoint call: %v\n%s", r.err, r.out)
	// Woken, the old leader either sent its prepare steps before it saw
	// its session gone (each hostd refused them), or stopped first: both
	// are races it may win or lose; what a hostd does with a step of the
	// old epoch is then shown directly, the way the old leader sends it.
	refused := 0
	for _, name := range []string{"a", "b"} {
		logs := h.hosts[name].Logs()
		refused += strings.Count(logs, "stale epoch")
		if !strings.Contains(logs, fmt.Sprintf(`"epoch":%d`, newEpoch)) {
			t.Errorf("hostd %s never saw epoch %d", name, newEpoch)
		}
	}
	t.Logf("the woken old leader's own steps refused by the hostds: %d", refused)
	for name, vm := range map[string]string{"a": "vm1", "b": "vm2"} {
		res, err := h.hosts[name].Client().Step(ctxT(t, 20*time.Second), hostd.StepRequest{ID: "stale-probe", Op: "op-stale",
			Kind: hostd.StepPrepare, VM: vm, Epoch: epoch, Prepare: &hostd.PrepareArgs{Operation: "checkpoint"}})
		if err != nil || res.OK || res.Code != "stale_epoch" {
			t.Fatalf("hostd %s, a step of the old epoch %d: %+v %v, want stale_epoch", name, epoch, res, err)
		}
	}
	logs := old.Logs()
	if strings.Contains(logs, `"msg":"operation done"`) {
		t.Fatalf("the old leader finished an operation after it was deposed")
	}
	if !strings.Contains(logs, "coordinator leadership lost") && !strings.Contains(logs, "not the leading coordinator") {
		t.Fatalf("the old leader neither saw its leadership lost nor a write refused")
	}
	if after := h.opsOf(t); after != before {
		t.Fatalf("the operations changed after the old leader woke:\n%s\nthen\n%s", before, after)
	}
	h.assertOnce(t)
	assertUntouched(t, h.cluster, since)
}

// opsOf is the stored operations, as JSON, once none runs.
func (h *haCluster) opsOf(t *testing.T) string {
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := h.cliAll("ops", "--last", "0", "--output", "json")
		if err != nil {
			t.Fatalf("ops: %v\n%s", err, out)
		}
		var views []coord.OpView
		if err := json.Unmarshal([]byte(out), &views); err != nil {
			t.Fatalf("ops: %v\n%s", err, out)
		}
		if !slices.ContainsFunc(views, func(v coord.OpView) bool { return v.Running }) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("an operation still runs:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// The leader is killed in a migration of vm2 from b to c, before the
// commit point (its migrate steps just journaled) and after it (the
// switch): the new leader rolls it back or finishes it; vm2 then runs on
// exactly one host, the one the coordinator names, and vm1's connection to
// it goes on.
func TestHACoordLeaderKilledMidMigration(t *testing.T) {
	for _, phase := range []string{"migrate", "switch"} {
		t.Run(phase, func(t *testing.T) { testHAKilledMidMigration(t, phase) })
	}
}

func testHAKilledMidMigration(t *testing.T, phase string) {
	h := newHACluster(t, "SYMVIRT_COORD_CRASH_AT="+phase)
	epoch := h.status(t).Epoch
	since := startJob(t, h.cluster, "")
	if _, out, err := h.op("migrate", "vm2", "--to", "c"); err == nil {
		t.Fatalf("the leader should have died mid-migration:\n%s", out)
	}
	waitExited(t, h.cluster)
	h.newLeader(t, h.coord, epoch)
	var ops []coord.OpView
	json.Unmarshal([]byte(h.opsOf(t)), &ops)
	var mig *coord.OpView
	for i := range ops {
		if ops[i].Kind == machine.KindMigrate {
			mig = &ops[i]
		}
	}
	if mig == nil || mig.Result == nil {
		t.Fatalf("no finished migration among %+v", ops)
	}
	where := h.where("jf")["vm2"]
	t.Logf("migration %s after the leader died at %s: outcome %s, vm2 on %s", mig.ID, phase, mig.Result.Outcome, where)
	switch {
	case phase == "switch" && (mig.Result.Outcome != machine.OutcomeMigrated || where != "c"):
		t.Fatalf("a migration past its commit point must end migrated on c: %s on %s", mig.Result.Outcome, where)
	case mig.Result.Outcome == machine.OutcomeMigrated && where != "c",
		mig.Result.Outcome != machine.OutcomeMigrated && where != "b":
		t.Fatalf("outcome %s but vm2 on %s", mig.Result.Outcome, where)
	}
	h.assertOnce(t)
	assertUntouched(t, h.cluster, since)
}

package coord_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

var pointStepRE = regexp.MustCompile(`"msg":"step","id":"([^"]+)","kind":"point","vm":"vm2"`)

// TestRestartLostStreamNeverCompletes: a job's live checkpoint whose hostd
// is killed (SIGKILL) and restarted while vm2's stream is written fails;
// the partial files go and the VMs run once, with their devices. What the
// restarted hostd knows of that stream survives a second restart after
// the job runs again: the point re-sent then (a late duplicate of the
// coordinator's, with its action id) gets its first answer instead of
// taking a new point at a later, inconsistent cut, and a wait-save of the
// stream answers failed, never complete.
func TestRestartLostStreamNeverCompletes(t *testing.T) {
	yaml := "live_mode: snapshot\n"
	c := newClusterWith(t, clusterOpts{hostdYAML: map[string]string{"a": yaml, "b": yaml}})
	since := startJob(t, c, "")
	b := c.hosts["b"]
	vm2Before, err := b.Client().Status(ctxT(t, 10*time.Second), "vm2")
	if err != nil {
		t.Fatal(err)
	}
	done := c.opAsync("checkpoint", "jf", "--live", "--bandwidth", "8M")
	state := waitStreaming(t, c, "b", "vm2")
	point := waitPointStep(t, b)
	b.Kill()
	time.Sleep(500 * time.Millisecond)
	b.Start()
	r := <-done
	if r.err == nil || r.res.Checkpoint != machine.CheckpointFailed {
		t.Fatalf("live checkpoint whose hostd died mid-stream: %v\n%s", r.err, r.out)
	}
	t.Logf("reason: %s", r.res.Reason)
	if s := checkpointStatus(t, c, r.res.CheckpointID); s != "failed" {
		t.Fatalf("checkpoint recorded %s", s)
	}
	assertUntouched(t, c, since)
	dir := filepath.Dir(state)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the lost stream's files are left: %v", err)
	}

	// The job runs again; hostd b restarts once more; the point arrives
	// again, late.
	b.Kill()
	b.Start()
	op, _, _ := strings.Cut(point, "/")
	req := hostd.StepRequest{ID: point, Op: op, Kind: hostd.StepPoint, VM: "vm2", Lease: time.Minute,
		Save: &hostd.SaveArgs{Dir: dir, Bandwidth: 8 << 20}}
	res, err := b.Client().Step(ctxT(t, time.Minute), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-sent point: %+v", res)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the re-sent point started a new stream at a later cut: %v", err)
	}
	wait := hostd.StepRequest{ID: op + "/vm2/late-wait-save", Op: op, Kind: hostd.StepWaitSave, VM: "vm2",
		Save: &hostd.SaveArgs{Dir: dir}}
	if res, err := b.Client().Step(ctxT(t, 3*time.Minute), wait); err != nil || res.OK ||
		!strings.Contains(res.Reason, hostd.ErrStreamLost.Error()) {
		t.Fatalf("wait-save of the lost stream: %+v %v", res, err)
	}
	// Running once: the same QEMU as before the checkpoint, and no other.
	st, err := b.Client().Status(ctxT(t, 10*time.Second), "vm2")
	if err != nil || st.State != "running" || st.PID != vm2Before.PID {
		t.Fatalf("vm2 after it all: %+v %v (pid before %d)", st, err, vm2Before.PID)
	}
	if pids := testenv.PIDsUnder(filepath.Join(b.StateDir, "vms", "vm2")); len(pids) != 1 {
		t.Fatalf("vm2's QEMUs: %v", pids)
	}
	assertUntouched(t, c, since)
}

// waitPointStep returns the action id of vm2's point step as hostd logged
// it once answered.
func waitPointStep(t *testing.T, h *testenv.Hostd) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := pointStepRE.FindStringSubmatch(h.Logs()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatal("vm2's point step was not answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package coord_test

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
)

// TestLiveJobCutIsConsistent: a 2-VM job on two hosts, its client VM
// talking to the other, checkpointed live in this host's default live
// mode. Each VM is fenced only right before its own snapshot point, and
// the fences lift only after the last point. Checked on the instants the
// hostds and QEMU report (one machine, one clock): every VM's fence is up
// before QEMU stops it for its point (a background snapshot, QEMU 7.2's
// default) or before QEMU runs it again (a precopy, QEMU 10's: its point
// is the stop), and no fence starts lifting before
// every VM's point is behind (QEMU ran it again) — so no packet leaves a
// VM after its point and reaches another before that one's. The
// connection carries on.
func TestLiveJobCutIsConsistent(t *testing.T) {
	c := newCluster(t)
	c.createJob("jc", "a", "b")
	peers := []string{"10.79.0.12"}
	last := c.waitTraffic("jc", "a", peers, map[string]int{})
	marks := c.logMarks()
	res, out, err := c.op("checkpoint", "jc")
	if err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	var ck coord.Checkpoint
	out, err = c.coord.CLI(t, "checkpoints", "show", res.CheckpointID, "--output", "json")
	if err != nil || json.Unmarshal([]byte(out), &ck) != nil {
		t.Fatalf("checkpoints show: %v\n%s", err, out)
	}
	var lastPoint time.Time
	stopped, points := map[string]time.Time{}, map[string]time.Time{}
	for _, v := range ck.VMs {
		if v.SnapshotAt.IsZero() {
			t.Fatalf("%s: no snapshot point recorded", v.Name)
		}
		stopped[v.Name], points[v.Name] = v.SnapshotAt.Add(-v.Pause), v.SnapshotAt
		if v.SnapshotAt.After(lastPoint) {
			lastPoint = v.SnapshotAt
		}
	}
	for vm, host := range map[string]string{"vm1": "a", "vm2": "b"} {
		log := c.hosts[host].Logs()[marks[host]:]
		fenced, lifted := fenceInstants(log, vm)
		t.Logf("%s: fenced %+.1f ms before its point's stop; lift began %+.1f ms after the last point",
			vm, ms(stopped[vm].Sub(fenced)), ms(lifted.Sub(lastPoint)))
		// A background snapshot's point is taken while the VM runs on, so
		// its fence must be up before the stop; a precopy's point is its
		// stop, and a stopped VM sends nothing: up before it runs again.
		fenceBy, by := stopped[vm], "QEMU stopped it for its point"
		if precopied(log, vm) {
			fenceBy, by = points[vm], "QEMU ran it again after its precopy's point"
		}
		switch {
		case fenced.IsZero() || lifted.IsZero():
			t.Fatalf("%s: fenced at %v, lifted from %v: want both in hostd %s's log", vm, fenced, lifted, host)
		case !fenced.Before(fenceBy):
			t.Errorf("%s: fenced at %v, not before %s at %v", vm, fenced, by, fenceBy)
		case !lifted.After(lastPoint):
			t.Errorf("%s: its fence began lifting at %v, before the job's last snapshot point %v", vm, lifted, lastPoint)
		}
	}
	c.waitTraffic("jc", "a", peers, last)
}

// fenceInstants reads vm's "network fenced" (at) and "network fence
// lifted" (from) instants in a hostd log.
func fenceInstants(log, vm string) (fenced, lifted time.Time) {
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		var e struct {
			Msg, VM  string
			At, From time.Time
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.VM != vm {
			continue
		}
		switch e.Msg {
		case "network fenced":
			fenced = e.At
		case "network fence lifted":
			lifted = e.From
		}
	}
	return fenced, lifted
}

// precopied tells whether vm's live checkpoint in a hostd log was a
// precopy (hostd's "live checkpoint copy started").
func precopied(log, vm string) bool {
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		var e struct{ Msg, VM string }
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.VM == vm && e.Msg == "live checkpoint copy started" {
			return true
		}
	}
	return false
}

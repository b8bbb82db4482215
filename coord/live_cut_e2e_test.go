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
// before QEMU stops it for its point, and no fence starts lifting before
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
	stopped := map[string]time.Time{}
	for _, v := range ck.VMs {
		if v.SnapshotAt.IsZero() {
			t.Fatalf("%s: no snapshot point recorded", v.Name)
		}
		stopped[v.Name] = v.SnapshotAt.Add(-v.Pause)
		if v.SnapshotAt.After(lastPoint) {
			lastPoint = v.SnapshotAt
		}
	}
	for vm, host := range map[string]string{"vm1": "a", "vm2": "b"} {
		fenced, lifted := fenceInstants(c.hosts[host].Logs()[marks[host]:], vm)
		t.Logf("%s: fenced %+.1f ms before its point's stop; lift began %+.1f ms after the last point",
			vm, ms(stopped[vm].Sub(fenced)), ms(lifted.Sub(lastPoint)))
		switch {
		case fenced.IsZero() || lifted.IsZero():
			t.Fatalf("%s: fenced at %v, lifted from %v: want both in hostd %s's log", vm, fenced, lifted, host)
		case !fenced.Before(stopped[vm]):
			t.Errorf("%s: fenced at %v, not before QEMU stopped it for its point at %v", vm, fenced, stopped[vm])
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

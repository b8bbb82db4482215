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
// mode, once per network fence scope (the job's network_fence).
//
// Scope all: each VM is fenced only right before its own snapshot point,
// and the fences lift only after the last point. Checked on the instants
// the hostds and QEMU report (one machine, one clock): every VM's fence is
// up before QEMU stops it for its point (a background snapshot, QEMU 7.2's
// default) or before QEMU runs it again (a precopy, QEMU 10's: its point
// is the stop), and no fence starts lifting before every VM's point is
// behind (QEMU ran it again) — so no packet leaves a VM after its point
// and reaches another before that one's.
//
// Scope job: no VM is fenced whole; each holds the frames from the other
// VM's NIC (its passthrough one left out) from before any VM's point until
// its own point — so no packet sent after its sender's point reaches a VM
// before that one's, whatever the order of the points.
//
// The connection carries on.
func TestLiveJobCutIsConsistent(t *testing.T) {
	for _, scope := range []string{coord.FenceAll, coord.FenceJob} {
		t.Run(scope, func(t *testing.T) { liveJobCutIsConsistent(t, scope) })
	}
}

func liveJobCutIsConsistent(t *testing.T, scope string) {
	c := newCluster(t)
	c.createJobFenced("jc", scope, "", "a", "b")
	if out := c.cli("jobs", "show", "jc"); scope == coord.FenceJob && !strings.Contains(out, "network fence: job") {
		t.Fatalf("jobs show does not say the job's network fence:\n%s", out)
	}
	peers := []string{"10.79.0.12"}
	last := c.waitTraffic("jc", "a", peers, map[string]int{})
	marks := c.logMarks()
	res, out, err := c.op("checkpoint", "jc")
	if err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	for _, v := range res.VMs {
		if v.Note != "" {
			t.Fatalf("%s: %s", v.Name, v.Note)
		}
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
		if scope == coord.FenceJob {
			checkPeerHold(t, log, vm, stopped)
			continue
		}
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

// checkPeerHold: vm's hold of the frames from the job's other VM was up
// before any VM of the job stopped for its point and ended only after vm's
// own stop; the whole VM was never fenced.
func checkPeerHold(t *testing.T, log, vm string, stopped map[string]time.Time) {
	t.Helper()
	h := holdInstants(log, vm)
	firstStop := time.Time{}
	for _, s := range stopped {
		if firstStop.IsZero() || s.Before(firstStop) {
			firstStop = s
		}
	}
	if fenced, _ := fenceInstants(log, vm); !fenced.IsZero() {
		t.Errorf("%s: fenced whole at %v under a job-scoped fence", vm, fenced)
	}
	if h.up.IsZero() || h.released.IsZero() {
		t.Fatalf("%s: hold up at %v, released at %v: want both in its hostd's log", vm, h.up, h.released)
	}
	t.Logf("%s: hold of %d peer MACs on %d NICs up %.1f ms before the job's first point; released %+.1f ms after its own point's stop",
		vm, h.peers, h.nics, ms(firstStop.Sub(h.up)), ms(h.released.Sub(stopped[vm])))
	switch {
	case h.peers != 1 || h.nics < 1:
		t.Errorf("%s: hold of %d peers on %d NICs: want the other VM's one non-passthrough NIC, on at least one NIC", vm, h.peers, h.nics)
	case !h.up.Before(firstStop):
		t.Errorf("%s: hold up at %v, not before the job's first point at %v", vm, h.up, firstStop)
	case !h.released.After(stopped[vm]):
		t.Errorf("%s: hold released at %v, before its own point at %v", vm, h.released, stopped[vm])
	}
}

// peerHold is what a hostd log says of a VM's job-scoped fence.
type peerHold struct {
	up, released time.Time
	nics, peers  int
}

// holdInstants reads vm's "network hold up" and "network hold released"
// in a hostd log: the time of each line (the hold is up before the first
// is written), and the release's "from" (when the held frames began to
// flow) where the line has one, else its time.
func holdInstants(log, vm string) peerHold {
	var h peerHold
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		var e struct {
			Msg, VM     string
			Time, From  time.Time
			NICs, Peers int
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.VM != vm {
			continue
		}
		switch {
		case strings.HasPrefix(e.Msg, "network hold up"):
			h.up, h.nics, h.peers = e.Time, e.NICs, e.Peers
		case e.Msg == "network hold released":
			h.released = e.Time
			if !e.From.IsZero() {
				h.released = e.From
			}
		}
	}
	return h
}

package coord_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testenv"
)

// loadRC (symvirt.load=1) keeps a guest busy: a CPU burner in every VM,
// and the "client" VM streams bulk data to each peer's echo server (40-echo)
// and back, as the ranks of a job exchange messages while they compute.
const loadRC = `#!/bin/sh
[ "$SYMVIRT_LOAD" = 1 ] || exit 0
( while :; do :; done ) </dev/null >/dev/null 2>&1 &
[ "$SYMVIRT_ROLE" = client ] || exit 0
for p in $(echo "$SYMVIRT_PEERS" | tr , " "); do
  ( until nc -w 2 $p 7000 </dev/null; do sleep 1; done
    echo "symvirt-load-ready $p"
    while :; do nc $p 7000 </dev/zero >/dev/null; sleep 0.2; done ) </dev/null >/dev/console 2>&1 &
done
`

// gapProbeAddr is the outside peer's address on the guests' network.
const gapProbeAddr = "10.79.0.200/24"

// TestBenchJobNetworkGap is `make bench`'s network gap line: live
// checkpoints of a 2-VM job of 1 GiB VMs that exchange bulk traffic under
// CPU load, seen by a peer outside the job on the VMs' network that pings
// each VM every 10 ms: the longest time a VM did not answer, beside each
// VM's recorded snapshot pause and the network fence hostd held. The
// first checkpoint of a fresh VM (its QEMU reads in all of the guest's RAM
// before its point) is round 0, with the whole-VM fence; then each round
// checkpoints once per network fence scope (--network-fence all, job),
// side by side, in alternating order; each line says its scope. The
// test's log has each checkpoint's timeline (steps, fences, holds, points).
//
// With SYMVIRT_NETGAP_COMPARE=1 a job whose hostds run the earlier path
// (SYMVIRT_NETGAP_OLD=1: the fence lifted after the resume step's
// persisting, the state files synced in one go) is measured first, in the
// same run, its lines marked "path":"old".
func TestBenchJobNetworkGap(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	paths := []string{"new"}
	if os.Getenv("SYMVIRT_NETGAP_COMPARE") == "1" {
		paths = []string{"old", "new"}
	}
	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			if path == "old" {
				t.Setenv("SYMVIRT_NETGAP_OLD", "1")
			}
			benchJobNetworkGap(t, path)
		})
	}
}

func benchJobNetworkGap(t *testing.T, path string) {
	o, mode := benchLiveMode(t)
	c := newClusterWith(t, o)
	pns := testenv.NewNetNS(t, "p")
	testenv.Attach(t, pns, gapProbeAddr, c.netns["a"], "br0")
	f := filepath.Join(t.TempDir(), "job.yaml")
	yaml := strings.ReplaceAll(c.jobYAML("gap", " symvirt.load=1", "a", "b"), "memory: 256M", "memory: 1G")
	os.WriteFile(f, []byte(yaml), 0o600)
	c.cli("jobs", "create", "-f", f)
	for i, h := range []string{"a", "b"} {
		waitFile(t, c.serial(h, fmt.Sprintf("vm%d", i+1)), `virtio-serial port open`)
	}
	waitFile(t, c.serial("a", "vm1"), `symvirt-load-ready`)
	addrs := map[string]string{"vm1": "10.79.0.11", "vm2": "10.79.0.12"}
	p := testenv.Probe(t, pns, []string{addrs["vm1"], addrs["vm2"]}, 10*time.Millisecond)
	type run struct {
		round int
		scope string
	}
	runs := []run{{0, coord.FenceAll}, {1, coord.FenceAll}, {1, coord.FenceJob}, {2, coord.FenceJob}, {2, coord.FenceAll}}
	for _, r := range runs {
		line := c.gapRound(p, addrs, "--network-fence", r.scope)
		line["bench"], line["vms"], line["memory_mib"], line["live_mode"], line["round"] = "job_network_gap", 2, 1024, mode, r.round
		line["path"], line["network_fence"] = path, r.scope
		benchline.Print(line)
	}
}

// gapRound checkpoints job "gap" live once (args added to the command)
// and measures it.
func (c *cluster) gapRound(p *testenv.Prober, addrs map[string]string, args ...string) map[string]any {
	t := c.t
	quietFrom := time.Now()
	time.Sleep(3 * time.Second)
	var quiet time.Duration
	for vm, a := range addrs {
		if !p.Answered(a, quietFrom) {
			t.Fatalf("%s (%s) does not answer the prober", vm, a)
		}
		quiet = max(quiet, p.Longest(a, quietFrom, time.Now()).Len())
	}
	marks := c.logMarks()
	start := time.Now()
	res, out, err := c.op(append([]string{"checkpoint", "gap"}, args...)...)
	if err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	took := time.Since(start)
	time.Sleep(time.Second)
	gaps, pauses := map[string]float64{}, map[string]float64{}
	var worst, fence, hold time.Duration
	var logs []string
	for h, d := range c.hosts {
		logs = append(logs, d.Logs()[marks[h]:])
	}
	cuts := cutEvents(logs)
	phases := map[string]any{}
	for vm, a := range addrs {
		g := p.Longest(a, start, time.Now())
		worst = max(worst, g.Len())
		gaps[vm] = g.Len().Seconds()
		ph := vmGapPhases(p.Gaps(a, start, time.Now()), cuts[vm], lastPoint(cuts))
		phases[vm] = ph
		t.Logf("%s: outside gap %.1f ms, from %+.1f ms; %s", vm, ms(g.Len()), ms(g.From.Sub(start)), phaseLine(ph))
	}
	var ck coord.Checkpoint
	if out, err := c.coord.CLI(t, "checkpoints", "show", res.CheckpointID, "--output", "json"); err != nil || json.Unmarshal([]byte(out), &ck) != nil {
		t.Fatalf("checkpoints show: %v\n%s", err, out)
	}
	for _, v := range ck.VMs {
		pauses[v.Name] = v.Pause.Seconds()
	}
	for h, d := range c.hosts {
		fence = max(fence, maxHeld(d.Logs()[marks[h]:], fenceHeldRE))
		hold = max(hold, maxHeld(d.Logs()[marks[h]:], holdHeldRE))
	}
	c.logTimeline(marks, start)
	return map[string]any{"outside_gap_max_seconds": worst.Seconds(), "outside_gap_seconds": gaps,
		"live_snapshot_pause_seconds": pauses, "live_network_fence_max_seconds": fence.Seconds(),
		"live_network_hold_max_seconds": hold.Seconds(),
		"live_checkpoint_seconds":       took.Seconds(), "gap_phases_ms": phases, "quiet_gap_max_seconds": quiet.Seconds(), "probe_period_seconds": 0.01}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// logPopulated says when hostd h last finished populating a guest's RAM
// file (ram_populate: start runs at the lowest priority beside the
// running VM), from start: a population still under way competes with the
// checkpoint.
func (c *cluster) logPopulated(h, logs string, start time.Time) {
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var e struct {
			Time    time.Time
			Msg, VM string
			For     string
			Took    time.Duration
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "guest RAM populated" && e.For == "bg_populate_ram_start" {
			c.t.Logf("%s: %s's RAM populated at %+.1f ms from the checkpoint's start (took %.1f ms)", h, e.VM, ms(e.Time.Sub(start)), ms(e.Took))
		}
	}
}

// coordMark keys the coordinator's log among the hostds' in logMarks.
const coordMark = "coord"

// logMarks is where each hostd's log, and the coordinator's, is now.
func (c *cluster) logMarks() map[string]int {
	m := map[string]int{coordMark: len(c.coord.Logs())}
	for h, d := range c.hosts {
		m[h] = len(d.Logs())
	}
	return m
}

// timelineMsgs are the hostd log lines of a live checkpoint's timeline.
var timelineMsgs = []string{"step", "network fenced", "network fence lifted", "snapshot point taken", holdUpMsg, "network hold released",
	"live checkpoint copy held at its switchover", "live checkpoint copy released", "live checkpoint: the guest dirties memory fast; longer pause allowed"}

// holdUpMsg is hostd's line for a job-scoped fence (a peer hold) going up.
const holdUpMsg = "network hold up: frames from the job's other VMs wait for this VM's point"

// logTimeline logs what each hostd did since marks, in ms from start:
// each step from its start to its end, fences and points; and the
// coordinator's journal writes, which its steps wait for.
func (c *cluster) logTimeline(marks map[string]int, start time.Time) {
	type event struct {
		at   time.Duration
		what string
	}
	var evs []event
	logs := map[string]string{coordMark: c.coord.Logs()[marks[coordMark]:]}
	for h, d := range c.hosts {
		logs[h] = d.Logs()[marks[h]:]
		c.logPopulated(h, d.Logs(), start)
	}
	for h, l := range logs {
		sc := bufio.NewScanner(strings.NewReader(l))
		for sc.Scan() {
			var e struct {
				Time          time.Time
				Msg, Kind, VM string
				Phase         string
				Actions       int
				Took, Pause   time.Duration
				QEMUSetup     time.Duration `json:"qemu_setup"`
				HeldNS        int64         `json:"held_ns"`
				OK            bool
				Passes        int64
				Remaining     int64
			}
			if json.Unmarshal(sc.Bytes(), &e) != nil || !slices.Contains(timelineMsgs, e.Msg) && !strings.HasPrefix(e.Msg, "journal writ") {
				continue
			}
			at := e.Time.Sub(start)
			if strings.HasPrefix(e.Msg, "journal writ") {
				// Its actions go out once it is written.
				evs = append(evs, event{at, fmt.Sprintf("%s: journal written, phase %s, %d actions (%.1f ms)", h, e.Phase, e.Actions, ms(e.Took))})
				continue
			}
			what := fmt.Sprintf("%s %s", e.Msg, e.VM)
			switch e.Msg {
			case "step":
				what = fmt.Sprintf("step %s %s ok=%v from %+.1f ms (%.1f ms)", e.Kind, e.VM, e.OK, ms(at-e.Took), ms(e.Took))
			case "network fence lifted", "network hold released":
				what += fmt.Sprintf(" held %.1f ms", float64(e.HeldNS)/1e6)
			case holdUpMsg:
				what = "network hold up " + e.VM
			case "snapshot point taken":
				what += fmt.Sprintf(" pause %.1f ms", ms(e.Pause))
				if e.QEMUSetup > 0 {
					what += fmt.Sprintf(" (QEMU's set-up before it %.1f ms)", ms(e.QEMUSetup))
				}
			case "live checkpoint copy held at its switchover", "live checkpoint copy released":
				what += fmt.Sprintf(" passes %d remaining %d KiB", e.Passes, e.Remaining>>10)
			}
			evs = append(evs, event{at, h + ": " + what})
		}
	}
	slices.SortFunc(evs, func(a, b event) int { return int(a.at - b.at) })
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "%+9.1f ms  %s\n", ms(e.at), e.what)
	}
	c.t.Logf("timeline (ms from the checkpoint's start; hostd and coordinator logs):\n%s", b.String())
}

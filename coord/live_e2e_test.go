package coord_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/pausewatch"
	"github.com/symvirt/symvirt/internal/testguest"
)

var counterRE = regexp.MustCompile(`symvirt-counter (\d+)`)

// counterLog is one guest's counter values, in the order printed.
// consoleDrain is how much shorter than QEMU's pause the console's gap
// may look (the check that the guest's tick loop ran at the cut).
const consoleDrain = 2 * time.Millisecond

func counterLog(path string) []int {
	data, _ := os.ReadFile(path)
	var out []int
	for _, m := range counterRE.FindAllStringSubmatch(string(data), -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

// TestLiveJobCheckpointRestoresTheCut: a 2-VM job whose client VM holds a
// TCP connection to the other; each guest runs a 1 ms timestamp loop on
// its console. A stop-and-save checkpoint, then a live one, side by side:
// the live checkpoint's longest tick gap (what the guests saw) is shorter.
// Then both VMs run on, are killed, and the job restarts from the live
// checkpoint: each guest's counter resumes from its value at the cut (a
// value printed during the checkpoint, not the later ones), and the TCP
// connection carries on (no reconnect). Once per network fence scope (the
// job's network_fence).
func TestLiveJobCheckpointRestoresTheCut(t *testing.T) {
	for _, scope := range []string{coord.FenceAll, coord.FenceJob} {
		t.Run(scope, func(t *testing.T) { liveJobCheckpointRestoresTheCut(t, scope) })
	}
}

func liveJobCheckpointRestoresTheCut(t *testing.T, scope string) {
	c := newCluster(t)
	c.createJobFenced("jl", scope, " symvirt.tick=1", "a", "b")
	peers := []string{"10.79.0.12"}
	last := c.waitTraffic("jl", "a", peers, map[string]int{})
	serials := map[string]string{"vm1": c.serial("a", "vm1"), "vm2": c.serial("b", "vm2")}
	vms := []string{"vm1", "vm2"}

	gaps := map[string]map[string]time.Duration{}
	var window map[string][2]int // per VM: last counter before, first... after the live checkpoint
	var ckID string
	var liveMons map[string]*pausewatch.GapMonitor
	for _, live := range []string{"--live=false", "--live=true"} {
		mons := map[string]*pausewatch.GapMonitor{}
		liveMons = mons
		before := map[string]int{}
		for _, vm := range vms {
			mons[vm] = pausewatch.WatchGaps(serials[vm])
			before[vm] = len(counterLog(serials[vm]))
		}
		res, out, err := c.op("checkpoint", "jl", live)
		if err != nil || res.Checkpoint != machine.CheckpointComplete {
			t.Fatalf("checkpoint %s: %v\n%s", live, err, out)
		}
		for _, v := range res.VMs {
			if strings.Contains(v.Note, "network fence") {
				t.Fatalf("%s: %s", v.Name, v.Note)
			}
		}
		time.Sleep(300 * time.Millisecond)
		gaps[live] = map[string]time.Duration{}
		window = map[string][2]int{}
		for _, vm := range vms {
			gaps[live][vm] = mons[vm].End()
			l := counterLog(serials[vm])
			window[vm] = [2]int{l[before[vm]-1], l[len(l)-1]}
		}
		ckID = res.CheckpointID
		last = c.waitTraffic("jl", "a", peers, last)
	}
	var ck coord.Checkpoint
	out, err := c.coord.CLI(t, "checkpoints", "show", ckID, "--output", "json")
	if err != nil || json.Unmarshal([]byte(out), &ck) != nil {
		t.Fatalf("checkpoints show: %v\n%s", err, out)
	}
	for _, vm := range ck.VMs {
		if vm.Pause <= 0 {
			t.Fatalf("vm %s: no snapshot pause recorded: was the checkpoint live? %+v", vm.Name, ck)
		}
		atCut := liveMons[vm.Name].At(vm.SnapshotAt)
		t.Logf("%s: snapshot pause %s (QEMU's events); tick gap at the cut %s; longest tick gap: live %s, stop-and-save %s",
			vm.Name, vm.Pause, atCut, gaps["--live=true"][vm.Name], gaps["--live=false"][vm.Name])
		for _, g := range liveMons[vm.Name].Longest(3) {
			t.Logf("  %s: gap %s from %+.1f ms after the snapshot point", vm.Name, g.Len().Round(100*time.Microsecond), float64(g.From.Sub(vm.SnapshotAt).Microseconds())/1000)
		}
		// The watcher sees the console grow late by its own scheduling on
		// a loaded host, and QEMU may write what the guest sent just
		// before the stop a little into it: the gap can fall short of
		// QEMU's pause by that much.
		if atCut+consoleDrain < vm.Pause {
			t.Errorf("vm %s: the guest's ticks show no pause around its snapshot point (%s): does the tick loop run?", vm.Name, vm.SnapshotAt)
		}
		if gaps["--live=true"][vm.Name] >= gaps["--live=false"][vm.Name] {
			t.Errorf("vm %s: the live checkpoint stalled the guest as long as stop-and-save did", vm.Name)
		}
	}

	restartsAtCut(t, c, "jl", serials, window, ckID)
}

// restartsAtCut checks that the job's VMs (their serial logs) run on past
// the cut (window: per VM, its counter before and after the checkpoint),
// then kills them and restarts the job from checkpoint ckID: each goes on
// from its counter at the cut.
func restartsAtCut(t *testing.T, c *cluster, job string, serials map[string]string, window map[string][2]int, ckID string) {
	vms, peers := []string{"vm1", "vm2"}, []string{"10.79.0.12"}
	ran := map[string]int{}
	for _, vm := range vms {
		deadline := time.Now().Add(60 * time.Second)
		for {
			l := counterLog(serials[vm])
			if l[len(l)-1] >= window[vm][1]+3 {
				ran[vm] = l[len(l)-1]
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the counter stopped at %d after the live checkpoint", vm, l[len(l)-1])
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	c.killAll(job)
	printed := map[string]int{}
	for _, vm := range vms {
		printed[vm] = len(counterLog(serials[vm]))
	}
	since := c.traffic("a")
	if res, out, err := c.op("restart", job, "--checkpoint", ckID); err != nil || res.Outcome != machine.OutcomeRestored {
		t.Fatalf("restart: %v\n%s", err, out)
	}
	for _, vm := range vms {
		deadline := time.Now().Add(60 * time.Second)
		for len(counterLog(serials[vm])) <= printed[vm] {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no counter after the restart", vm)
			}
			time.Sleep(200 * time.Millisecond)
		}
		first := counterLog(serials[vm])[printed[vm]]
		// The guest goes on from its value at the cut, which it printed
		// while the live checkpoint ran: not from a later value.
		atCut := first - 1
		if atCut < window[vm][0] || atCut > window[vm][1] {
			t.Fatalf("%s: restarted at %d: the cut was while the counter went %d..%d (it reached %d before the kill)",
				vm, first, window[vm][0], window[vm][1], ran[vm])
		}
		t.Logf("%s: counter at the cut %d (checkpoint ran while it went %d..%d; %d before the kill), restarted at %d",
			vm, atCut, window[vm][0], window[vm][1], ran[vm], first)
		if slices.Contains(counterLog(serials[vm])[:printed[vm]], 0) && first == 1 {
			t.Fatalf("%s: booted afresh instead of restoring", vm)
		}
	}
	c.waitTraffic(job, "a", peers, since)
}

// Where QEMU refuses a background snapshot, that VM's part of a live job
// checkpoint is taken stop-and-save, the result says so and why, and a
// restart from the mixed checkpoint does not care which kind each part is.
// A running VM's live checkpoint is a copy that any QEMU that can save can
// take; a VM with a disk stops for the cut (its disk is copied at it) and
// then needs a background snapshot. vm2 has a disk, and host b's QEMU is
// a wrapper with auto-converge on, which QEMU 7.2 does not combine with
// background-snapshot.
func TestLiveCheckpointFallsBackWhereRefused(t *testing.T) {
	wrapper := filepath.Join(t.TempDir(), "qemu-autoconverge")
	os.WriteFile(wrapper, []byte("#!/bin/sh\nexec "+testguest.Qemu+" \"$@\" -global migration.x-auto-converge=on\n"), 0o755)
	c := newClusterWith(t, clusterOpts{hostdYAML: map[string]string{"b": "qemu: " + wrapper + "\n"}})
	disk := filepath.Join(t.TempDir(), "vm2.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := c.jobYAML("jr", "", "a", "b")
	at := strings.Index(yaml, "  - name: vm2\n")
	spec := strings.Index(yaml[at:], "    spec:\n") + at + len("    spec:\n")
	yaml = yaml[:spec] + "      disks: [{id: d0, path: " + disk + ", format: raw}]\n" + yaml[spec:]
	f := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(f, []byte(yaml), 0o600)
	c.cli("jobs", "create", "-f", f)
	peers := []string{"10.79.0.12"}
	last := c.waitTraffic("jr", "a", peers, map[string]int{})
	res, out, err := c.op("checkpoint", "jr")
	if err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	notes := map[string]string{}
	for _, v := range res.VMs {
		notes[v.Name] = v.Note
	}
	if !strings.Contains(notes["vm2"], "stop-and-save instead of live") || !strings.Contains(notes["vm2"], "auto-converge") {
		t.Fatalf("vm2 (refusing QEMU) has no fallback note with the reason: %q\n%s", notes["vm2"], out)
	}
	if notes["vm1"] != "" {
		t.Fatalf("vm1 was live, yet: %q", notes["vm1"])
	}
	t.Logf("vm2: %s", notes["vm2"])
	text, _ := c.coord.CLI(t, "checkpoint", "jr")
	if !strings.Contains(text, "note: vm2: stop-and-save instead of live") {
		t.Fatalf("the terminal output does not show the fallback:\n%s", text)
	}
	last = c.waitTraffic("jr", "a", peers, last)
	c.killAll("jr")
	last = c.traffic("a")
	if r, out, err := c.op("restart", "jr", "--checkpoint", res.CheckpointID); err != nil || r.Outcome != machine.OutcomeRestored {
		t.Fatalf("restart from a checkpoint half live, half stop-and-save: %v\n%s", err, out)
	}
	c.waitTraffic("jr", "a", peers, last)
}

// With live_mode precopy (the default under KVM) each VM is copied while
// it runs, unfenced, and fenced at its own snapshot point, the stop at the
// end of its copy, before it runs again; the fences lift after the last
// point. On a QEMU with switchover-ack (8.1 and later) the copy starts at
// the arm and is held at its switchover until the point step: no VM's
// copy is released before every VM's first pass is over. The job's
// connection carries on. (Not restored here: under TCG, QEMU 7.2's precopy
// loses guest writes, see hostd's TestPrecopyImageExactWhereAutoTakesIt,
// which is why TCG hosts on 7.2 default to snapshot.)
func TestLivePrecopyJobFencesEachVMAtItsPoint(t *testing.T) {
	major, _, _ := strings.Cut(testguest.QemuVersion(t), ".")
	n, _ := strconv.Atoi(major)
	held := n >= 9
	yaml := "live_mode: precopy\n"
	c := newClusterWith(t, clusterOpts{hostdYAML: map[string]string{"a": yaml, "b": yaml}})
	c.createJob("jp", "a", "b")
	peers := []string{"10.79.0.12"}
	last := c.waitTraffic("jp", "a", peers, map[string]int{})
	marks := map[string]int{"a": len(c.hosts["a"].Logs()), "b": len(c.hosts["b"].Logs())}
	res, out, err := c.op("checkpoint", "jp")
	if err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	for _, v := range res.VMs {
		if v.Note != "" {
			t.Fatalf("%s: %s", v.Name, v.Note)
		}
	}
	var lastHeld, firstReleased time.Time
	for vm, host := range map[string]string{"vm1": "a", "vm2": "b"} {
		logs := c.hosts[host].Logs()[marks[host]:]
		at := func(msg string) int {
			i := strings.Index(logs, `"msg":"`+msg+`","vm":"`+vm+`"`)
			if i < 0 {
				t.Fatalf("%s: no %q in hostd %s's log", vm, msg, host)
			}
			return i
		}
		copied, fenced, point, lifted := at("live checkpoint copy started"), at("network fenced"), at("snapshot point taken"), at("network fence lifted")
		if !(copied < fenced && fenced < point && point < lifted) {
			t.Fatalf("%s: copy started, fenced, point, lifted at %d, %d, %d, %d in the log: want that order", vm, copied, fenced, point, lifted)
		}
		if !held {
			continue
		}
		h, r := at("live checkpoint copy held at its switchover"), at("live checkpoint copy released")
		if !(copied < h && h < r && r < fenced) {
			t.Fatalf("%s: copy started, held, released, fenced at %d, %d, %d, %d in the log: want that order", vm, copied, h, r, fenced)
		}
		if ht := logTime(t, logs[:h]); ht.After(lastHeld) {
			lastHeld = ht
		}
		if rt := logTime(t, logs[:r]); firstReleased.IsZero() || rt.Before(firstReleased) {
			firstReleased = rt
		}
	}
	if held && !lastHeld.Before(firstReleased) {
		t.Fatalf("a copy was released at %s, before the last VM's first pass was over (%s)", firstReleased, lastHeld)
	}
	var ck coord.Checkpoint
	out, err = c.coord.CLI(t, "checkpoints", "show", res.CheckpointID, "--output", "json")
	if err != nil || json.Unmarshal([]byte(out), &ck) != nil {
		t.Fatalf("checkpoints show: %v\n%s", err, out)
	}
	for _, v := range ck.VMs {
		t.Logf("%s: snapshot pause %s", v.Name, v.Pause)
		if v.Pause <= 0 || v.Pause > time.Second {
			t.Fatalf("%s: snapshot pause %s", v.Name, v.Pause)
		}
	}
	c.waitTraffic("jp", "a", peers, last)
}

// logTime is the time of the log line that ends logs (cut before its
// message): its "time" field.
func logTime(t *testing.T, logs string) time.Time {
	t.Helper()
	i := strings.LastIndex(logs, `{"time":"`)
	if i < 0 {
		t.Fatalf("no time before %q", logs[max(0, len(logs)-80):])
	}
	ts, _, _ := strings.Cut(logs[i+len(`{"time":"`):], `"`)
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

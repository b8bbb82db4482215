package coord_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pausewatch"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchJobCheckpoint is `make bench`'s job line: a job checkpoint and
// a job restart of 1, 2 and 4 VMs on three hosts, against checkpointing
// (and restoring) the same VMs one after another through their hostds,
// run side by side. The ratio is sequential time over job time.
func TestBenchJobCheckpoint(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	// e.g. SYMVIRT_BENCH_JOB_VMS=4: one size only.
	sizes := testguest.BenchSizes(t, "SYMVIRT_BENCH_JOB_VMS", []int{1, 2, 4}, 1, 4)
	// e.g. SYMVIRT_BENCH_LIVE_MODE=precopy: the hostds' live_mode (default:
	// theirs, snapshot on this TCG host).
	o := clusterOpts{}
	mode := os.Getenv("SYMVIRT_BENCH_LIVE_MODE")
	switch mode {
	case "":
		mode = "auto"
	case "precopy", "snapshot", "auto":
		o.hostdYAML = map[string]string{}
		for _, h := range []string{"a", "b", "c"} {
			o.hostdYAML[h] = "live_mode: " + mode + "\n"
		}
	default:
		t.Fatalf("SYMVIRT_BENCH_LIVE_MODE=%q: want precopy, snapshot or auto", mode)
	}
	c := newClusterWith(t, o)
	placement := []string{"a", "b", "c", "a"}
	for _, n := range sizes {
		job := fmt.Sprintf("bench%d", n)
		f := filepath.Join(t.TempDir(), "job.yaml")
		// Ticks every 2 ms: at 1 ms four TCG guests' ticking alone kept
		// both cores busy (each vCPU ran 30% and waited 50% of the time
		// on the run queue with no checkpoint at all).
		yaml := c.jobYAML(job, " symvirt.tick=1 symvirt.tickperiod=2000", placement[:n]...)
		// Each job gets its own VM names and taps.
		yaml = strings.ReplaceAll(yaml, "name: vm", "name: "+job+"vm")
		os.WriteFile(f, []byte(yaml), 0o600)
		c.cli("jobs", "create", "-f", f)
		for i := 1; i <= n; i++ {
			// Booted through: the app registered and guestd (which loads
			// its eBPF programs first, slow under TCG) listens.
			waitFile(t, c.serial(placement[i-1], fmt.Sprintf("%svm%d", job, i)), `hook: registered`)
			waitFile(t, c.serial(placement[i-1], fmt.Sprintf("%svm%d", job, i)), `virtio-serial port open`)
			waitFile(t, c.serial(placement[i-1], fmt.Sprintf("%svm%d", job, i)), `virtio-serial port open`)
		}
		// The guest-visible pause of each VM (the gap in its 1 ms tick
		// loop around its snapshot point; stop-and-save: the longest),
		// the longest stall, stop-and-save then live, and the whole time.
		pause, whole := map[string]time.Duration{}, map[string]time.Duration{}
		// The noise floor: the longest gap with no operation running.
		var quiet time.Duration
		{
			mons := map[string]*pausewatch.GapMonitor{}
			for i := 1; i <= n; i++ {
				vm := fmt.Sprintf("%svm%d", job, i)
				mons[vm] = pausewatch.WatchGaps(c.serial(placement[i-1], vm))
			}
			time.Sleep(3 * time.Second)
			for _, m := range mons {
				quiet = max(quiet, m.End())
			}
		}
		var snapshotPause, atCut, fenceHeld time.Duration
		atCutPerVM := map[string]float64{}
		for _, live := range []string{"--live=false", "--live=true"} {
			mons := map[string]*pausewatch.GapMonitor{}
			for i := 1; i <= n; i++ {
				vm := fmt.Sprintf("%svm%d", job, i)
				mons[vm] = pausewatch.WatchGaps(c.serial(placement[i-1], vm))
			}
			logMark := map[string]int{}
			for h, d := range c.hosts {
				logMark[h] = len(d.Logs())
			}
			start := time.Now()
			res, out, err := c.op("checkpoint", job, live)
			if err != nil || res.Checkpoint != machine.CheckpointComplete {
				t.Fatalf("checkpoint %s: %v\n%s", live, err, out)
			}
			whole[live] = time.Since(start)
			time.Sleep(300 * time.Millisecond)
			for _, m := range mons {
				pause[live] = max(pause[live], m.End())
			}
			if live == "--live=true" {
				var ck coord.Checkpoint
				out, err := c.coord.CLI(t, "checkpoints", "show", res.CheckpointID, "--output", "json")
				if err != nil || json.Unmarshal([]byte(out), &ck) != nil {
					t.Fatalf("checkpoints show: %v\n%s", err, out)
				}
				for _, v := range ck.VMs {
					snapshotPause = max(snapshotPause, v.Pause)
					atCut = max(atCut, mons[v.Name].At(v.SnapshotAt))
					atCutPerVM[v.Name] = mons[v.Name].At(v.SnapshotAt).Seconds()
					for _, g := range mons[v.Name].Longest(3) {
						t.Logf("%s: gap %.1f ms from %+.1f ms after its snapshot point", v.Name,
							float64(g.Len().Microseconds())/1000, float64(g.From.Sub(v.SnapshotAt).Microseconds())/1000)
					}
				}
				for h, d := range c.hosts {
					fenceHeld = max(fenceHeld, maxFenceHeld(d.Logs()[logMark[h]:]))
				}
			}
		}
		start := time.Now()
		res, out, err := c.op("checkpoint", job)
		if err != nil || res.Checkpoint != machine.CheckpointComplete {
			t.Fatalf("checkpoint: %v\n%s", err, out)
		}
		jobCk := time.Since(start)

		// Baseline: the same VMs, one after another, each with its own
		// cooperation round, detach, save, re-attach.
		dirs := map[string]string{}
		start = time.Now()
		for i := 1; i <= n; i++ {
			vm, h := fmt.Sprintf("%svm%d", job, i), placement[i-1]
			dirs[vm] = filepath.Join(c.ckDir, "seq-"+vm)
			if _, err := c.hosts[h].Client().Checkpoint(ctxT(t, 5*time.Minute), vm, hostd.CheckpointOptions{Dir: dirs[vm]}, nil); err != nil {
				t.Fatal(err)
			}
		}
		seqCk := time.Since(start)

		c.killAll(job)
		start = time.Now()
		if _, out, err := c.op("restart", job, "--checkpoint", res.CheckpointID); err != nil {
			t.Fatalf("restart: %v\n%s", err, out)
		}
		jobRestart := time.Since(start)
		c.killAll(job)
		start = time.Now()
		for i := 1; i <= n; i++ {
			vm, h := fmt.Sprintf("%svm%d", job, i), placement[i-1]
			if _, err := c.hosts[h].Client().Restore(ctxT(t, 5*time.Minute), hostd.RestoreOptions{Dir: dirs[vm]}, nil); err != nil {
				t.Fatal(err)
			}
		}
		seqRestart := time.Since(start)
		line, _ := json.Marshal(map[string]any{"bench": "job_checkpoint_restart", "vms": n, "memory_mib": 256,
			"job_checkpoint_seconds": jobCk.Seconds(), "sequential_checkpoint_seconds": seqCk.Seconds(),
			"checkpoint_ratio_sequential_over_job": seqCk.Seconds() / jobCk.Seconds(),
			"job_restart_seconds":                  jobRestart.Seconds(), "sequential_restore_seconds": seqRestart.Seconds(),
			"restart_ratio_sequential_over_job":     seqRestart.Seconds() / jobRestart.Seconds(),
			"stop_and_save_guest_pause_max_seconds": pause["--live=false"].Seconds(),
			"live_guest_pause_at_cut_max_seconds":   atCut.Seconds(), "live_guest_pause_at_cut_seconds": atCutPerVM,
			"live_longest_stall_max_seconds":  pause["--live=true"].Seconds(),
			"live_snapshot_pause_max_seconds": snapshotPause.Seconds(), "quiet_longest_gap_max_seconds": quiet.Seconds(), "tick_period_seconds": 0.002,
			"live_network_fence_max_seconds": fenceHeld.Seconds(), "live_mode": mode,
			"stop_and_save_checkpoint_seconds": whole["--live=false"].Seconds(),
			"live_checkpoint_seconds":          whole["--live=true"].Seconds(),
			"pause_ratio_stop_over_live":       pause["--live=false"].Seconds() / atCut.Seconds()})
		fmt.Println(string(line))
		c.killAll(job)
	}
}

var fenceHeldRE = regexp.MustCompile(`"msg":"network fence lifted".*"held_ns":(\d+)`)

// maxFenceHeld is the longest network fence in hostd's log.
func maxFenceHeld(log string) time.Duration {
	var m time.Duration
	for _, x := range fenceHeldRE.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.ParseInt(x[1], 10, 64)
		m = max(m, time.Duration(n))
	}
	return m
}

package coord_test

import (
	"cmp"
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
	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/pausewatch"
	"github.com/symvirt/symvirt/internal/testguest"
	"golang.org/x/sys/unix"
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
	o, mode := benchLiveMode(t)
	c := newClusterWith(t, o)
	for _, n := range sizes {
		b := &jobBench{t: t, c: c, job: fmt.Sprintf("bench%d", n), placement: []string{"a", "b", "c", "a"}[:n]}
		b.start()
		quiet := b.quiet()
		pauses := b.pauses()
		start := time.Now()
		res, out, err := c.op("checkpoint", b.job)
		if err != nil || res.Checkpoint != machine.CheckpointComplete {
			t.Fatalf("checkpoint: %v\n%s", err, out)
		}
		jobCk := time.Since(start)
		seqCk, jobRestart, seqRestart := b.baseline(res.CheckpointID)
		benchline.Print(map[string]any{"bench": "job_checkpoint_restart", "vms": n, "memory_mib": 256,
			"job_checkpoint_seconds": jobCk.Seconds(), "sequential_checkpoint_seconds": seqCk.Seconds(),
			"checkpoint_ratio_sequential_over_job": seqCk.Seconds() / jobCk.Seconds(),
			"job_restart_seconds":                  jobRestart.Seconds(), "sequential_restore_seconds": seqRestart.Seconds(),
			"restart_ratio_sequential_over_job":     seqRestart.Seconds() / jobRestart.Seconds(),
			"stop_and_save_guest_pause_max_seconds": pauses.pause["--live=false"].Seconds(),
			"live_guest_pause_at_cut_max_seconds":   pauses.atCut.Seconds(), "live_guest_pause_at_cut_seconds": pauses.atCutPerVM,
			"live_longest_stall_max_seconds":  pauses.pause["--live=true"].Seconds(),
			"live_snapshot_pause_max_seconds": pauses.snapshot.Seconds(), "quiet_longest_gap_max_seconds": quiet.Seconds(), "tick_period_seconds": 0.002,
			"live_network_fence_max_seconds": pauses.fenceHeld.Seconds(), "live_mode": mode, "qemu": testguest.QemuVersion(t),
			"live_snapshot_pause_seconds": pauses.snapshotPerVM, "live_stall_before_stop_max_seconds": pauses.beforeStop.Seconds(),
			"live_stall_after_resume_max_seconds": pauses.afterResume.Seconds(),
			"live_points_spread_seconds":          pauses.spread.Seconds(),
			"live_vcpu_wait_at_point_max_seconds": pauses.vcpuWait.Seconds(),
			"live_point_realtime":                 cmp.Or(os.Getenv("SYMVIRT_BENCH_POINT_REALTIME"), "hostd's default"),
			"stop_and_save_checkpoint_seconds":    pauses.whole["--live=false"].Seconds(),
			"live_checkpoint_seconds":             pauses.whole["--live=true"].Seconds(),
			"pause_ratio_stop_over_live":          pauses.pause["--live=false"].Seconds() / pauses.atCut.Seconds()})
		c.killAll(b.job)
	}
}

// benchLiveMode is the hostds' live_mode the bench runs with, from
// SYMVIRT_BENCH_LIVE_MODE=precopy|snapshot|auto (default: theirs,
// snapshot on this TCG host).
func benchLiveMode(t *testing.T) (clusterOpts, string) {
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
	// SYMVIRT_BENCH_POINT_REALTIME=true|false sets the hostds'
	// live_point_realtime (default: theirs).
	if rt := os.Getenv("SYMVIRT_BENCH_POINT_REALTIME"); rt != "" {
		if o.hostdYAML == nil {
			o.hostdYAML = map[string]string{}
		}
		for _, h := range []string{"a", "b", "c"} {
			o.hostdYAML[h] += "live_point_realtime: " + rt + "\n"
		}
	}
	// SYMVIRT_BENCH_SHM_HUGE=1 keeps each host's guest RAM on a tmpfs of
	// its own mounted with huge=within_size (shm_dir, as the README
	// advises) instead of /dev/shm.
	if os.Getenv("SYMVIRT_BENCH_SHM_HUGE") == "1" {
		if o.hostdYAML == nil {
			o.hostdYAML = map[string]string{}
		}
		for _, h := range []string{"a", "b", "c"} {
			o.hostdYAML[h] += "shm_dir: " + hugeTmpfs(t) + "\n"
		}
	}
	return o, mode
}

// hugeTmpfs mounts a tmpfs with huge pages (huge=within_size) for the
// test, in a directory every local user may traverse (QEMU runs as one of
// its own).
func hugeTmpfs(t *testing.T) string {
	dir, err := os.MkdirTemp("", "symvirt-shm-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "huge=within_size,mode=0755,size=8g"); err != nil {
		os.Remove(dir)
		t.Fatalf("mount a tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		unix.Unmount(dir, unix.MNT_DETACH)
		os.Remove(dir)
	})
	return dir
}

// jobBench measures one job of len(placement) VMs, vm i on placement[i-1].
type jobBench struct {
	t         *testing.T
	c         *cluster
	job       string
	placement []string
}

func (b *jobBench) vm(i int) string { return fmt.Sprintf("%svm%d", b.job, i) }

// start creates the job and waits until its guests booted through: the
// app registered and guestd (which loads its eBPF programs first, slow
// under TCG) listens.
func (b *jobBench) start() {
	f := filepath.Join(b.t.TempDir(), "job.yaml")
	// Ticks every 2 ms: at 1 ms four TCG guests' ticking alone kept both
	// cores busy (each vCPU ran 30% and waited 50% of the time on the run
	// queue with no checkpoint at all).
	yaml := b.c.jobYAML(b.job, " symvirt.tick=1 symvirt.tickperiod=2000", b.placement...)
	// Each job gets its own VM names and taps.
	yaml = strings.ReplaceAll(yaml, "name: vm", "name: "+b.job+"vm")
	os.WriteFile(f, []byte(yaml), 0o600)
	b.c.cli("jobs", "create", "-f", f)
	for i := 1; i <= len(b.placement); i++ {
		waitFile(b.t, b.c.serial(b.placement[i-1], b.vm(i)), `hook: registered`)
		waitFile(b.t, b.c.serial(b.placement[i-1], b.vm(i)), `virtio-serial port open`)
	}
}

// watch starts a tick gap monitor on every VM.
func (b *jobBench) watch() map[string]*pausewatch.GapMonitor {
	mons := map[string]*pausewatch.GapMonitor{}
	for i := 1; i <= len(b.placement); i++ {
		mons[b.vm(i)] = pausewatch.WatchGaps(b.c.serial(b.placement[i-1], b.vm(i)))
	}
	return mons
}

// quiet is the noise floor: the longest gap with no operation running.
func (b *jobBench) quiet() time.Duration {
	mons := b.watch()
	time.Sleep(3 * time.Second)
	var quiet time.Duration
	for _, m := range mons {
		quiet = max(quiet, m.End())
	}
	return quiet
}

// benchPauses: the guest-visible pause of each VM (the gap in its tick
// loop around its snapshot point; stop-and-save: the longest), the
// longest stall, stop-and-save then live, and the whole time.
type benchPauses struct {
	pause, whole               map[string]time.Duration
	snapshot, atCut, fenceHeld time.Duration
	atCutPerVM, snapshotPerVM  map[string]float64
	// The gap at the cut outside QEMU's own pause: the guest stalled
	// before QEMU stopped it, and after QEMU ran it again.
	beforeStop, afterResume time.Duration
	spread                  time.Duration // from the first point to the last
	// vcpuWait: the longest a VM's vCPU waited for a core over its point.
	vcpuWait time.Duration
}

// pauses checkpoints the job stop-and-save, then live, and measures both.
func (b *jobBench) pauses() benchPauses {
	p := benchPauses{pause: map[string]time.Duration{}, whole: map[string]time.Duration{},
		atCutPerVM: map[string]float64{}, snapshotPerVM: map[string]float64{}}
	for _, live := range []string{"--live=false", "--live=true"} {
		mons := b.watch()
		logMark := map[string]int{}
		for h, d := range b.c.hosts {
			logMark[h] = len(d.Logs())
		}
		start := time.Now()
		res, out, err := b.c.op("checkpoint", b.job, live)
		if err != nil || res.Checkpoint != machine.CheckpointComplete {
			b.t.Fatalf("checkpoint %s: %v\n%s", live, err, out)
		}
		p.whole[live] = time.Since(start)
		time.Sleep(300 * time.Millisecond)
		for _, m := range mons {
			p.pause[live] = max(p.pause[live], m.End())
		}
		if live == "--live=true" {
			b.points(&p, res.CheckpointID, mons)
			for h, d := range b.c.hosts {
				p.fenceHeld = max(p.fenceHeld, maxHeld(d.Logs()[logMark[h]:], fenceHeldRE))
			}
		}
	}
	return p
}

// points reads a live checkpoint's snapshot points and the guests' pause
// around each.
func (b *jobBench) points(p *benchPauses, id string, mons map[string]*pausewatch.GapMonitor) {
	var ck coord.Checkpoint
	out, err := b.c.coord.CLI(b.t, "checkpoints", "show", id, "--output", "json")
	if err != nil || json.Unmarshal([]byte(out), &ck) != nil {
		b.t.Fatalf("checkpoints show: %v\n%s", err, out)
	}
	first := ck.VMs[0].SnapshotAt
	for _, v := range ck.VMs {
		if v.SnapshotAt.Before(first) {
			first = v.SnapshotAt
		}
	}
	for _, v := range ck.VMs {
		p.spread = max(p.spread, v.SnapshotAt.Sub(first))
		p.snapshot = max(p.snapshot, v.Pause)
		p.atCut = max(p.atCut, mons[v.Name].At(v.SnapshotAt))
		p.atCutPerVM[v.Name] = mons[v.Name].At(v.SnapshotAt).Seconds()
		p.snapshotPerVM[v.Name] = v.Pause.Seconds()
		// The pause QEMU saw (its STOP to its RESUME) ends at the point:
		// a gap starting before it began is the guest stalled before QEMU
		// stopped it.
		b.t.Logf("%s: QEMU's pause %.1f ms, its point %.1f ms after the job's first", v.Name,
			float64(v.Pause.Microseconds())/1000, float64(v.SnapshotAt.Sub(first).Microseconds())/1000)
		if run, wait, ok := b.pointSched(v.Name); ok {
			b.t.Logf("%s: its vCPU from the point's start to its RESUME ran %.1f ms, waited for a core %.1f ms", v.Name, ms(run), ms(wait))
			p.vcpuWait = max(p.vcpuWait, wait)
		}
		if g, ok := mons[v.Name].GapAt(v.SnapshotAt); ok {
			before, after := v.SnapshotAt.Add(-v.Pause).Sub(g.From), g.To.Sub(v.SnapshotAt)
			p.beforeStop, p.afterResume = max(p.beforeStop, before), max(p.afterResume, after)
			b.t.Logf("%s: gap at its point %.1f ms: %.1f ms before QEMU's STOP, %.1f ms after its RESUME", v.Name,
				float64(g.Len().Microseconds())/1000, float64(before.Microseconds())/1000, float64(after.Microseconds())/1000)
		}
		for _, g := range mons[v.Name].Longest(3) {
			b.t.Logf("%s: gap %.1f ms from %+.1f ms after its snapshot point", v.Name,
				float64(g.Len().Microseconds())/1000, float64(g.From.Sub(v.SnapshotAt).Microseconds())/1000)
		}
	}
}

// pointSched is the vCPU's schedstat over vm's last snapshot point, from
// its hostd's "snapshot point taken" line.
func (b *jobBench) pointSched(vm string) (run, wait time.Duration, ok bool) {
	for _, d := range b.c.hosts {
		logs := d.Logs()
		i := strings.LastIndex(logs, `"msg":"snapshot point taken"`)
		for i >= 0 {
			line := logs[i:]
			line, _, _ = strings.Cut(line, "\n")
			var e struct {
				VM       string
				VCPURun  time.Duration `json:"vcpu_run"`
				VCPUWait time.Duration `json:"vcpu_wait"`
			}
			start := strings.LastIndex(logs[:i], "\n") + 1
			if json.Unmarshal([]byte(logs[start:i]+line), &e) == nil && e.VM == vm {
				return e.VCPURun, e.VCPUWait, true
			}
			i = strings.LastIndex(logs[:i], `"msg":"snapshot point taken"`)
		}
	}
	return 0, 0, false
}

// baseline checkpoints the same VMs one after another, each with its own
// cooperation round, detach, save, re-attach, and restores them one after
// another, against the job restart from checkpoint ck.
func (b *jobBench) baseline(ck string) (seqCk, jobRestart, seqRestart time.Duration) {
	dirs := map[string]string{}
	start := time.Now()
	for i := 1; i <= len(b.placement); i++ {
		vm, h := b.vm(i), b.placement[i-1]
		dirs[vm] = filepath.Join(b.c.ckDir, "seq-"+vm)
		if _, err := b.c.hosts[h].Client().Checkpoint(ctxT(b.t, 5*time.Minute), vm, hostd.CheckpointOptions{Dir: dirs[vm]}, nil); err != nil {
			b.t.Fatal(err)
		}
	}
	seqCk = time.Since(start)
	b.c.killAll(b.job)
	start = time.Now()
	if _, out, err := b.c.op("restart", b.job, "--checkpoint", ck); err != nil {
		b.t.Fatalf("restart: %v\n%s", err, out)
	}
	jobRestart = time.Since(start)
	b.c.killAll(b.job)
	start = time.Now()
	for i := 1; i <= len(b.placement); i++ {
		if _, err := b.c.hosts[b.placement[i-1]].Client().Restore(ctxT(b.t, 5*time.Minute), hostd.RestoreOptions{Dir: dirs[b.vm(i)]}, nil); err != nil {
			b.t.Fatal(err)
		}
	}
	return seqCk, jobRestart, time.Since(start)
}

var (
	fenceHeldRE = regexp.MustCompile(`"msg":"network fence lifted".*"held_ns":(\d+)`)
	holdHeldRE  = regexp.MustCompile(`"msg":"network hold released".*"held_ns":(\d+)`)
)

// maxHeld is the longest hold re finds in hostd's log: fenceHeldRE a
// whole-VM network fence's, holdHeldRE a job-scoped fence's (peer hold).
func maxHeld(log string, re *regexp.Regexp) time.Duration {
	var m time.Duration
	for _, x := range re.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.ParseInt(x[1], 10, 64)
		m = max(m, time.Duration(n))
	}
	return m
}

package hostd_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/pausewatch"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// copyStorageRun is one side's live migration of the pattern guest
// between two hosts that share no disk directory.
type copyStorageRun struct {
	Total      time.Duration // the migrate command, start to end
	Pause      time.Duration // the guest's longest pause, on the host's clock (pauses)
	Generation int           // the pattern's newest generation on the destination's disk, whole
	Extra      map[string]any
}

// patternGuest is the pattern guest's kernel, initrd and command line,
// the same on both sides.
type patternGuest struct{ kernel, initrd, append string }

const (
	benchMemory  = 256       // MiB
	benchPreload = 256 << 20 // data on the disk before the guest starts
)

// TestBenchCopyStorageVsLibvirt is `make bench` for migrate
// --copy-storage: the pattern guest of TestMigrateCopyStorage (256 MiB,
// a 2 GiB sparse qcow2 with 256 MiB of data, the guest writing its
// checksummed pattern throughout) migrates live between two hosts that
// share no disk directory, with symvirt (two hostds, mutual TLS) and then,
// in the same run, with libvirt 9.0 (`virsh migrate --live
// --copy-storage-all` between two libvirtds). Each side's pattern is
// checked whole on the destination's disk; it prints one JSON line per
// side (total time, the guest's longest pause) and their ratios
// (symvirt's over libvirt's).
func TestBenchCopyStorageVsLibvirt(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	testenv.RequireRoot(t)
	requireLibvirt(t)
	kernel, _ := testguest.Paths(t)
	g := patternGuest{kernel: kernel, append: "console=ttyS0 quiet panic=-1 symvirt.tickperiod=5000",
		initrd: testguest.Initrd(t, map[string]testguest.File{
			"/etc/symvirt/rc.d/30-pattern": {Mode: 0o755, Data: []byte(patternRC)},
			"/etc/symvirt/rc.d/41-tick":    {Mode: 0o755, Data: []byte(pausewatch.TickScript)},
			"/bin/tick":                    {Src: pausewatch.TickBinary(t), Mode: 0o755}})}
	// SYMVIRT_BENCH_COPY_SIDE=symvirt|libvirt: that side only (no ratio).
	side := os.Getenv("SYMVIRT_BENCH_COPY_SIDE")
	var sv, lv copyStorageRun
	if side != "libvirt" {
		sv = benchSymvirtCopyStorage(t, g)
		emitCopyStorage("symvirt", sv)
	}
	if side != "symvirt" {
		lv = benchLibvirtCopyStorage(t, g)
		emitCopyStorage("libvirt", lv)
	}
	if side == "" {
		benchline.Print(map[string]any{"bench": "copy_storage_symvirt_vs_libvirt", "memory_mib": benchMemory,
			"total_ratio": sv.Total.Seconds() / lv.Total.Seconds(), "pause_ratio": sv.Pause.Seconds() / lv.Pause.Seconds()})
	}
}

func emitCopyStorage(side string, r copyStorageRun) {
	v := map[string]any{"bench": "copy_storage", "side": side, "memory_mib": benchMemory, "disk_gib": diskSize >> 30,
		"preload_mib": benchPreload >> 20, "total_seconds": r.Total.Seconds(), "longest_pause_ms": float64(r.Pause.Microseconds()) / 1000,
		"pattern_whole": true, "pattern_generation": r.Generation}
	for k, x := range r.Extra {
		v[k] = x
	}
	benchline.Print(v)
}

// pauses measures the guest's pauses over a migration on the host's clock:
// the longest gap in the source's console while the migration runs, the
// switch-over (the source's last output to the destination's first), and
// the longest gap on the destination's afterwards, while the guest writes
// its pattern there.
type pauses struct {
	start    time.Time
	dst      string
	src, on  *pausewatch.GapMonitor
	sw       *switchWatch
	switchAt time.Duration
}

func watchPauses(src, dst string) *pauses {
	return &pauses{start: time.Now(), dst: dst, src: pausewatch.WatchGaps(src), sw: watchSwitch(src, dst)}
}

// switched is called once the migration returned.
func (p *pauses) switched(t *testing.T) {
	p.switchAt = p.sw.pause(t)
	p.on = pausewatch.WatchGaps(p.dst)
}

// end returns the longest pause and the three figures; it logs the
// source's longest gaps, when they began after the migration's start.
func (p *pauses) end(t *testing.T) (time.Duration, map[string]any) {
	src, dst := p.src.End(), p.on.End()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for _, g := range p.src.Longest(3) {
		t.Logf("source gap of %s at +%s", g.Len().Round(time.Millisecond), g.From.Sub(p.start).Round(time.Millisecond))
	}
	return max(src, p.switchAt, dst), map[string]any{"source_longest_gap_ms": ms(src),
		"switch_over_pause_ms": ms(p.switchAt), "destination_longest_gap_ms": ms(dst)}
}

// patternDisk creates the 2 GiB sparse qcow2 at path with the preload.
func patternDisk(t *testing.T, path string, preload int) {
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprint(diskSize))
	if preload > 0 {
		testenv.Run(t, "qemu-io", "-c", fmt.Sprintf("write -P 0xab 0 %d", preload), path)
	}
}

// benchSymvirtCopyStorage: TestMigrateCopyStorage's move (without its
// checkpoint, which libvirt has no counterpart of), timed.
func benchSymvirtCopyStorage(t *testing.T, g patternGuest) copyStorageRun {
	p := newMirrorPair(t)
	ctx := ctxT(t, 20*time.Minute)
	disk := filepath.Join(t.TempDir(), "bcs.qcow2")
	patternDisk(t, disk, benchPreload)
	spec := hostd.Spec{Name: "bcs", Memory: benchMemory, VCPUs: 1, Kernel: g.kernel, Initrd: g.initrd, Append: g.append,
		Guest: hostd.Channel{Type: "none"}, Disks: []hostd.Disk{{ID: "root", Path: disk, Format: "qcow2"}}}
	if _, err := p.src.Client().Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	before := waitGen(t, serialLog(p.src, "bcs"), 2*patternBlocks, 3*time.Minute)
	pw := watchPauses(serialLog(p.src, "bcs"), serialLog(p.dst, "bcs"))
	start := pw.start
	res, err := p.migrate(ctx, t, "bcs")
	if err != nil {
		t.Fatalf("symvirt migrate --copy-storage: %v\nsource:\n%s", err, p.src.Logs())
	}
	r := copyStorageRun{Total: time.Since(start)}
	pw.switched(t)
	if err := os.Rename(disk, disk+".gone"); err != nil { // the destination must not need it
		t.Fatal(err)
	}
	after := waitGen(t, serialLog(p.dst, "bcs"), before+2*patternBlocks, 3*time.Minute)
	r.Pause, r.Extra = pw.end(t)
	if _, err := p.dst.Client().Action(ctx, "bcs", "pause"); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(p.dst.Layout().VM("bcs"), "disk-root.qcow2")
	r.Generation = verifyPattern(t, own)
	if r.Generation < after {
		t.Fatalf("symvirt: the destination's disk holds generation %d, the guest printed %d", r.Generation, after)
	}
	verifyPreload(t, own, benchPreload)
	r.Extra["qemu_total_seconds"] = res.TotalTime.Seconds()
	r.Extra["qemu_downtime_ms"] = float64(res.Downtime.Microseconds()) / 1000
	t.Logf("symvirt: %s in all, pause %s, QEMU total %s downtime %s, pattern whole at generation %d",
		r.Total.Round(time.Millisecond), r.Pause.Round(time.Millisecond), res.TotalTime, res.Downtime, r.Generation)
	return r
}

// benchLibvirtCopyStorage: the same guest on the same kind of disk, moved
// by `virsh migrate --live --copy-storage-all` between two libvirtds in
// their own namespaces, linked as symvirt's hosts are. libvirt copies into
// a disk that exists on the destination (it creates one only in a storage
// pool): an empty 2 GiB qcow2 there, as an administrator would make.
func benchLibvirtCopyStorage(t *testing.T, g patternGuest) copyStorageRun {
	const name = "lvcs"
	a, b := testenv.NewNetNS(t, "la"), testenv.NewNetNS(t, "lb")
	testenv.Link(t, a, b, "10.77.19.1/24", "10.77.19.2/24")
	src, dst := startLibvirtHost(t, a, 1), startLibvirtHost(t, b, 2)
	patternDisk(t, src.image(name), benchPreload)
	patternDisk(t, dst.image(name), 0)
	qemu, err := exec.LookPath(testguest.Qemu)
	if err != nil {
		t.Fatal(err)
	}
	xml := filepath.Join(t.TempDir(), name+".xml")
	dom := fmt.Sprintf(libvirtDomainXML, name, benchMemory, g.kernel, g.initrd, g.append, qemu)
	if err := os.WriteFile(xml, []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := src.virsh("create", xml); err != nil {
		t.Fatal(err)
	}
	before := waitGen(t, src.serial(name), 2*patternBlocks, 3*time.Minute)
	pw := watchPauses(src.serial(name), dst.serial(name))
	start := pw.start
	out, err := src.virsh("migrate", "--live", "--copy-storage-all", "--verbose", name, dst.uri(),
		"--migrateuri", "tcp://10.77.19.2", "--listen-address", "10.77.19.2")
	if err != nil {
		log, _ := os.ReadFile(src.path("libvirtd.log"))
		t.Fatalf("libvirt migrate --copy-storage-all: %v\nsource libvirtd:\n%s", err, log[max(0, len(log)-3000):])
	}
	r := copyStorageRun{Total: time.Since(start)}
	pw.switched(t)
	if err := os.Rename(src.image(name), src.image(name)+".gone"); err != nil {
		t.Fatal(err)
	}
	if st, err := dst.virsh("domstate", name); err != nil || !regexp.MustCompile(`running`).MatchString(st) {
		t.Fatalf("libvirt destination: %q %v", st, err)
	}
	after := waitGen(t, dst.serial(name), before+2*patternBlocks, 3*time.Minute)
	r.Pause, r.Extra = pw.end(t)
	libvirtJobInfo(t, dst, name, r.Extra)
	if _, err := dst.virsh("suspend", name); err != nil {
		t.Fatal(err)
	}
	r.Generation = verifyPattern(t, dst.image(name))
	if r.Generation < after {
		t.Fatalf("libvirt: the destination's disk holds generation %d, the guest printed %d", r.Generation, after)
	}
	verifyPreload(t, dst.image(name), benchPreload)
	t.Logf("libvirt: %s in all, pause %s, pattern whole at generation %d; virsh: %s",
		r.Total.Round(time.Millisecond), r.Pause.Round(time.Millisecond), r.Generation, out)
	return r
}

var jobInfoRE = regexp.MustCompile(`(?m)^(Time elapsed|Total downtime):\s+(\d+) ms`)

// libvirtJobInfo adds libvirt's own account of the finished migration (the
// destination keeps it) to v: its elapsed time and downtime.
func libvirtJobInfo(t *testing.T, h *libvirtHost, name string, v map[string]any) {
	out, err := h.virsh("domjobinfo", name, "--completed")
	if err != nil {
		t.Logf("libvirt job info: %v", err)
		return
	}
	t.Logf("libvirt job info (destination):\n%s", out)
	for _, m := range jobInfoRE.FindAllStringSubmatch(out, -1) {
		ms, _ := strconv.ParseFloat(m[2], 64)
		if m[1] == "Time elapsed" {
			v["libvirt_elapsed_seconds"] = ms / 1000
		} else {
			v["libvirt_downtime_ms"] = ms
		}
	}
}

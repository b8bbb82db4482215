package hostd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/hostd/snapshot"
	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchOps is `make bench` for hostd: it prints one JSON line (the
// median of benchRounds runs) per
// measurement (detach, attach, checkpoint, restore, migrate) for a 256 MiB,
// a 1 GiB and a 2 GiB guest, each of checkpoint, restore and migrate beside
// the same operation on plain QEMU driven over QMP in the same run
// (bench_plain_test.go): the ratio is what symvirt's guarantees cost a
// user. Each line carries the breakdown of symvirt's time by step and by
// phase within a step, from hostd's log.
func TestBenchOps(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	kernel, initrd := testguest.Paths(t)
	// e.g. SYMVIRT_BENCH_OPS_MIB=1024: one size only.
	for _, mem := range testguest.BenchSizes(t, "SYMVIRT_BENCH_OPS_MIB", []int{256, 1024, 2048}, 128, 2048) {
		// A subtest each: a size's hosts (their pools, their files) are
		// gone before the next size's start.
		t.Run(fmt.Sprintf("%dMiB", mem), func(t *testing.T) { benchSize(t, kernel, initrd, Size(mem)) })
	}
}

// benchHost starts a hostd in-process; liveMode, if given, is its
// live_mode.
func benchHost(t *testing.T, name string, liveMode ...string) (*Host, string) {
	return benchHostLog(t, name, slog.DiscardHandler, liveMode...)
}

// benchHostLog is benchHost logging to log.
func benchHostLog(t *testing.T, name string, log slog.Handler, liveMode ...string) (*Host, string) {
	return benchHostConfig(t, name, log, func(c *Config) {
		if len(liveMode) > 0 {
			c.LiveMode = liveMode[0]
		}
	})
}

// benchHostConfig is benchHostLog with its config changed by edit.
func benchHostConfig(t *testing.T, name string, log slog.Handler, edit func(*Config)) (*Host, string) {
	dir := t.TempDir()
	log = slog.NewMultiHandler(log, logOnFailure(t, "hostd "+name))
	cfg := Config{StateDir: dir, Logger: slog.New(log),
		Pools:  map[string][]map[string]string{"nic": {{"mac": "52:54:00:ee:00:0" + name}}},
		Policy: testPolicy(t), RAMPool: os.Getenv("SYMVIRT_BENCH_RAM_POOL"), // e.g. 0: without the pool
		RAMPoolReserve: os.Getenv("SYMVIRT_BENCH_RAM_POOL_RESERVE")} // e.g. 0: TestBenchOps without its reserve
	edit(&cfg)
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := h.layout().Socket()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Close()
		for _, vm := range h.List() {
			if v, err := h.Get(vm.Name); err == nil {
				v.kill()
			}
		}
		h.Close()
		for _, d := range h.layout().RAMDirs() {
			os.RemoveAll(d)
		}
	})
	return h, sock
}

// logOnFailure is a debug log kept in a file and printed, its last 400
// lines, only when the test fails: a benchmark's hosts log nothing else.
func logOnFailure(t *testing.T, who string) slog.Handler {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer f.Close()
		if !t.Failed() {
			return
		}
		data, _ := os.ReadFile(f.Name())
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		t.Logf("%s's log, its last lines:\n%s", who, strings.Join(lines[max(0, len(lines)-400):], "\n"))
	})
	return slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})
}

// benchShmDir is TestBenchOps's hosts' tmpfs for guest RAM: one of its
// own, mounted with huge=within_size (shm_dir as the README advises: guest
// RAM on 2 MiB pages, as plain QEMU's private RAM has them), unmounted at
// the test's end; /dev/shm with SYMVIRT_BENCH_SHM_HUGE=0. The other
// benches keep /dev/shm.
func benchShmDir(t *testing.T) string {
	if os.Getenv("SYMVIRT_BENCH_SHM_HUGE") == "0" {
		return ""
	}
	dir, err := mountHugeTmpfs(t, qemu.FreeBytes(qemu.DefaultShmDir))
	if err != nil {
		t.Fatalf("guest RAM's tmpfs (SYMVIRT_BENCH_SHM_HUGE=0: /dev/shm): %v", err)
	}
	return dir
}

// benchRounds: each line is the median of as many runs (this machine is
// shared; one run of a few hundred milliseconds is mostly its noise).
const benchRounds = 3

// benchSize runs, benchRounds times, the baseline, then symvirt on the
// same guest with its RAM in a shared file (the default where /dev/shm
// has room: warm restarts need it), then with private RAM
// ("_private_ram" lines).
func benchSize(t *testing.T, kernel, initrd string, mem Size) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	phases := &phaseLog{}
	onShm := func(c *Config) {
		c.ShmDir = benchShmDir(t)
		if c.RAMPool != "0" && c.RAMPoolReserve == "" {
			// As on a host that takes migrations and restores: the first
			// round's VMs get pooled files too.
			c.RAMPoolReserve = "2G"
		}
	}
	a, _ := benchHostConfig(t, "1", phases.handler(), onShm)
	b, sockB := benchHostConfig(t, "2", phases.handler(), onShm)
	plain := map[string][]benchSample{}
	plainUnplug := map[string][]benchSample{} // the same, a script's unplug and plug around each
	ours := map[string][]benchSample{}
	rounds := benchEnvInt("SYMVIRT_BENCH_OPS_ROUNDS", benchRounds, 1) // e.g. 1 while iterating on one phase
	for round := range rounds {
		rams := benchRAMs()
		settle(a, b)
		g := benchGuest{kernel: kernel, initrd: initrd}
		base := plainBaseline(ctx, t, a, mem, g)
		baseUnplug := plainBaselineUnplug(ctx, t, a, mem, g)
		for _, r := range rams {
			for op, d := range base {
				plain[op+r.suffix] = append(plain[op+r.suffix], benchSample{took: d})
			}
			for op, d := range baseUnplug {
				plainUnplug[op+r.suffix] = append(plainUnplug[op+r.suffix], benchSample{took: d})
			}
		}
		for i, r := range rams {
			a.cfg.RAMPopulate, b.cfg.RAMPopulate = r.populate, r.populate
			snapshot.SaveByRead = r.saveByRead
			name := fmt.Sprintf("bench%d-%d-%d", mem, round, i)
			settle(a, b)
			for _, s := range benchOps(ctx, t, a, sockB, phases, kernel, initrd, name, mem, r) {
				ours[s.bench] = append(ours[s.bench], s)
			}
			removeBenchVM(t, b, name) // its NIC goes back to b's pool
		}
	}
	for _, bench := range slices.Sorted(maps.Keys(ours)) {
		s := median(ours[bench])
		m := s.extra
		m["bench"], m["memory_mib"], m["seconds"], m["rounds"] = bench, int(mem), s.took.Seconds(), len(ours[bench])
		m["rounds_seconds"] = roundSeconds(ours[bench])
		if _, ok := plain[bench]; ok {
			addBaseline(m, "plain_qemu", bench, s, plain)
			addBaseline(m, "plain_qemu_unplug", bench, s, plainUnplug)
			m["phases_seconds"] = s.phases
			if slow := slowest(ours[bench]); slow.took > s.took*3/2 {
				m["slowest_round_phases_seconds"] = slow.phases // an outlier's breakdown beside the median's
			}
			if rest, ok := unattributed(s); ok {
				m["phases_unattributed_seconds"] = rest
			}
		}
		benchline.Print(m)
	}
}

// addBaseline puts into m a baseline's median for bench (name_seconds),
// its rounds and s's ratio to it (ratio_vs_name), and for a checkpoint
// the same against the baseline's synced checkpoint (name_synced_...).
func addBaseline(m map[string]any, name, bench string, s benchSample, base map[string][]benchSample) {
	add := func(name string, p []benchSample) {
		d := median(p).took
		m[name+"_seconds"], m["ratio_vs_"+name] = d.Seconds(), s.took.Seconds()/d.Seconds()
		m[name+"_rounds_seconds"] = roundSeconds(p)
	}
	if p, ok := base[bench]; ok {
		add(name, p)
	}
	if p, ok := base[strings.Replace(bench, "checkpoint", "checkpoint_synced", 1)]; ok && strings.HasPrefix(bench, "checkpoint") {
		add(name+"_synced", p)
	}
}

// benchRAM is a way of keeping guest RAM a bench compares: its lines'
// suffix, shared (a file on /dev/shm) or private, when hostd populates it.
type benchRAM struct {
	suffix   string
	shared   bool
	populate string
	// saveByRead: a shared RAM file saved as before its mapped copy
	// (snapshot.SaveByRead).
	saveByRead bool
}

// benchRAMs are the default (shared, populated at start), private RAM,
// the populate settings listed in $SYMVIRT_BENCH_RAM_POPULATE (e.g.
// "operation,never": "_populate_operation" lines) and, with
// SYMVIRT_BENCH_SAVE_BY_READ=1, the shared RAM file saved as before its
// mapped copy ("_save_by_read" lines), to compare.
func benchRAMs() []benchRAM {
	rams := []benchRAM{{suffix: "", shared: true, populate: populateAtStart}}
	if os.Getenv("SYMVIRT_BENCH_SAVE_BY_READ") == "1" {
		rams = append(rams, benchRAM{suffix: "_save_by_read", shared: true, populate: populateAtStart, saveByRead: true})
	}
	for _, p := range strings.FieldsFunc(os.Getenv("SYMVIRT_BENCH_RAM_POPULATE"), func(r rune) bool { return r == ',' }) {
		rams = append(rams, benchRAM{suffix: "_populate_" + p, shared: true, populate: p})
	}
	if os.Getenv("SYMVIRT_BENCH_PRIVATE_RAM") == "0" { // e.g. while iterating on a shared RAM file's save
		return rams
	}
	return append(rams, benchRAM{suffix: "_private_ram", shared: false, populate: populateAtStart})
}

// benchSample is one measurement: how long, symvirt's phases, other
// figures for its line.
type benchSample struct {
	bench  string
	took   time.Duration
	phases map[string]float64
	extra  map[string]any
}

// unattributed is the part of a direct operation's time that none of
// its steps, nor the destination's resume (a peer call, not a step here),
// accounts for: the driver's journal, its machine, the calls between. A
// migration's launch runs beside its detach: not counted twice.
func unattributed(s benchSample) (float64, bool) {
	rest, steps := s.took.Seconds()-s.phases["dest_finish"], false
	for name, v := range s.phases {
		if strings.HasPrefix(name, "step_") && name != "step_launch" {
			rest, steps = rest-v, true
		}
	}
	return rest, steps
}

// settle waits (30 s at most) until the hosts' background work on RAM
// files is done (population, the pool's clearing): each baseline and each
// guest's run of operations starts on a host that is not still working
// for the one before. What an operation itself leaves running stays in
// the operations after it.
func settle(hosts ...*Host) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		busy := false
		for _, h := range hosts {
			busy = busy || h.populating.Load() > 0 || h.ramPool.busy()
		}
		if !busy {
			return
		}
	}
}

// removeBenchVM kills and deletes the VM, if h has it. The exit of its
// QEMU takes the VM's lock a moment (watch): Delete is tried again then.
func removeBenchVM(t *testing.T, h *Host, name string) {
	vm, err := h.Get(name)
	if err != nil {
		return
	}
	vm.kill()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := h.Delete(name)
		if err == nil || !errors.Is(err, ErrBusy) || time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("delete %s: %v", name, err)
			}
			return
		}
	}
}

// roundSeconds is each round's time, in the order they ran: how far one
// run's rounds spread, beside their median.
func roundSeconds(s []benchSample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = math.Round(x.took.Seconds()*1000) / 1000
	}
	return out
}

// slowest is the sample of longest time.
func slowest(s []benchSample) benchSample {
	return slices.MaxFunc(s, func(a, b benchSample) int { return cmp.Compare(a.took, b.took) })
}

// median is the sample of median time.
func median(s []benchSample) benchSample {
	s = slices.Clone(s)
	slices.SortFunc(s, func(a, b benchSample) int { return cmp.Compare(a.took, b.took) })
	return s[len(s)/2]
}

// benchOps measures detach, attach, checkpoint, restore and migrate of a
// new VM (it ends on sockB's host).
func benchOps(ctx context.Context, t *testing.T, a *Host, sockB string, phases *phaseLog, kernel, initrd, name string, mem Size, ram benchRAM) (out []benchSample) {
	suffix, shared := ram.suffix, ram.shared
	vm := startBenchVM(ctx, t, a, name, mem, benchGuest{kernel: kernel, initrd: initrd}, &shared)
	settle(a) // its RAM populated: a VM that has been running a while
	add := func(bench string, took time.Duration, start time.Time, extra map[string]any) {
		out = append(out, benchSample{bench: bench + suffix, took: took, phases: phases.since(start), extra: extra})
	}
	start := time.Now()
	if err := vm.Detach(ctx, "pt0"); err != nil {
		t.Fatal(err)
	}
	add("detach", time.Since(start), start, map[string]any{})
	start = time.Now()
	if err := vm.Attach(ctx, "pt0"); err != nil {
		t.Fatal(err)
	}
	add("attach", time.Since(start), start, map[string]any{})
	// The checkpoint meets a NIC the guest has in service, as a user's
	// would, not one it is still taking up (whose unplug is shorter).
	time.Sleep(2 * time.Second)

	dir := filepath.Join(t.TempDir(), "ckpt")
	start = time.Now()
	res, err := vm.Checkpoint(ctx, CheckpointOptions{Dir: dir, Stop: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	add("checkpoint", res.Duration, start, map[string]any{"vcpu_stopped_seconds": res.Downtime.Seconds(), "bytes": res.Bytes})

	start = time.Now()
	if vm, err = a.Restore(ctx, RestoreOptions{Dir: dir}, nil); err != nil {
		t.Fatal(err)
	}
	add("restore", time.Since(start), start, map[string]any{})
	// A VM that runs, not one whose guest still takes the NIC plugged
	// back at the restore's end (its unplug would wait for that).
	time.Sleep(2 * time.Second)

	start = time.Now()
	mres, err := vm.Migrate(ctx, MigrateOptions{To: sockB}, nil)
	if err != nil {
		t.Fatal(err)
	}
	add("migrate", mres.Duration, start, map[string]any{"qemu_total_seconds": mres.TotalTime.Seconds(),
		"qemu_downtime_seconds": mres.Downtime.Seconds(), "bytes": mres.Transferred, "pages": mres.Pages})
	return out
}

func waitSerial(t *testing.T, path string, re *regexp.Regexp) {
	deadline := time.Now().Add(8 * time.Minute)
	for time.Now().Before(deadline) {
		if data, _ := os.ReadFile(path); re.Match(data) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: no %s", path, re)
}

// fillScript dirties most of guest RAM (non-zero pages cost a full page in
// any save), so the cold path pays for the memory a real guest uses.
const fillScript = `#!/bin/sh
( kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo); mb=$((kb * 6 / 10 / 1024))
  mkdir -p /run/fill && mount -t tmpfs -o size=${mb}m tmpfs /run/fill
  yes symvirt-fill-pattern | head -c 1048576 > /run/fill/s1
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do cat /run/fill/s1; done > /run/fill/s16
  i=16; while [ $i -lt $((mb - 20)) ]; do cat /run/fill/s16; i=$((i + 16)); done > /run/fill/f
  echo "symvirt-filled $mb" ) &
`

// TestBenchRejuvenate compares the warm VMM restart with the cold path
// (checkpoint RAM to a file, new QEMU, restore) side by side, per VM size
// and for 1 and 4 VMs: per-VM vCPU downtime and whole-host time.
func TestBenchRejuvenate(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	kernel, base := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{"/etc/symvirt/rc.d/40-fill": {Mode: 0o755, Data: []byte(fillScript)}})
	_ = base
	for _, c := range []struct {
		mem Size
		n   int
	}{{256, 1}, {1024, 1}, {2048, 1}, {256, 4}, {1024, 4}} {
		benchWarmCold(t, kernel, initrd, c.mem, c.n)
	}
}

func benchWarmCold(t *testing.T, kernel, initrd string, mem Size, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	h, _ := benchHost(t, "3")
	on := true
	var vms []*VM
	for i := range n {
		vm, err := h.Create(Spec{Name: fmt.Sprintf("w%d-%d", mem, i), Memory: mem, VCPUs: 1, Kernel: kernel, Initrd: initrd,
			Append: "console=ttyS0 quiet", SharedMemory: &on})
		if err != nil {
			t.Fatal(err)
		}
		if err := vm.Start(ctx); err != nil {
			t.Fatal(err)
		}
		vms = append(vms, vm)
	}
	for _, vm := range vms {
		waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-filled`))
	}
	// Warm: every VM at once, five rounds; the median round is reported
	// (a single sample of a few milliseconds is mostly scheduling noise).
	var warmMaxes, warmHosts []time.Duration
	for range 5 {
		start := time.Now()
		res := h.Rejuvenate(ctx, RejuvenateOptions{Parallel: n})
		warmHosts = append(warmHosts, time.Since(start))
		var m time.Duration
		for _, r := range res {
			if r.Error != "" || r.Skipped != "" {
				t.Fatalf("rejuvenate: %+v", r)
			}
			m = max(m, r.Downtime)
		}
		warmMaxes = append(warmMaxes, m)
	}
	slices.Sort(warmMaxes)
	slices.Sort(warmHosts)
	warmMax, warmHost := warmMaxes[2], warmHosts[2]
	// Cold: checkpoint (with quit) and restore every VM, in parallel.
	type cold struct {
		down time.Duration
		err  error
	}
	results := make(chan cold, n)
	dir := t.TempDir()
	start := time.Now()
	for _, vm := range vms {
		go func() {
			t0 := time.Now()
			ck := filepath.Join(dir, vm.name)
			cres, err := vm.Checkpoint(ctx, CheckpointOptions{Dir: ck, Stop: true, NoGuest: true}, nil)
			if err != nil {
				results <- cold{err: err}
				return
			}
			stoppedAt := t0.Add(cres.Duration - cres.Downtime)
			if _, err := h.Restore(ctx, RestoreOptions{Dir: ck, NoGuest: true}, nil); err != nil {
				results <- cold{err: err}
				return
			}
			results <- cold{down: time.Since(stoppedAt)}
		}()
	}
	var coldMax time.Duration
	for range vms {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		coldMax = max(coldMax, r.down)
	}
	coldHost := time.Since(start)
	benchline.Print(map[string]any{"bench": "rejuvenate_vs_cold", "memory_mib": int(mem), "vms": n,
		"warm_downtime_max_seconds": warmMax.Seconds(), "warm_downtime_worst_of_5_seconds": warmMaxes[4].Seconds(), "cold_downtime_max_seconds": coldMax.Seconds(),
		"warm_host_seconds": warmHost.Seconds(), "cold_host_seconds": coldHost.Seconds(),
		"downtime_ratio_cold_over_warm": coldMax.Seconds() / warmMax.Seconds()})
	for _, info := range h.List() {
		if v, err := h.Get(info.Name); err == nil {
			v.kill()
		}
	}
}

// reserveHugePages makes n free 2 MiB pages and a hugetlbfs mount for the
// test, and puts both back after; false if the kernel cannot.
func reserveHugePages(t *testing.T, n int) bool {
	const knob = "/proc/sys/vm/nr_hugepages"
	old, err := os.ReadFile(knob)
	if err != nil {
		t.Logf("no huge pages here: %v", err)
		return false
	}
	if err := os.WriteFile(knob, []byte(strconv.Itoa(n)), 0o644); err != nil {
		t.Logf("cannot reserve huge pages: %v", err)
		return false
	}
	t.Cleanup(func() { os.WriteFile(knob, old, 0o644) })
	if qemu.HugetlbfsDir() == "" {
		dir := t.TempDir()
		if out, err := exec.Command("mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", dir).CombinedOutput(); err != nil {
			t.Logf("cannot mount hugetlbfs: %v %s", err, out)
			return false
		}
		t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	}
	data, _ := os.ReadFile("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
	free, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if free < n {
		t.Logf("only %d huge pages free", free)
		return false
	}
	return true
}

// benchEnvInt is the integer in environment variable name if it is at
// least least, else def.
func benchEnvInt(name string, def, least int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n >= least {
		return n
	}
	return def
}

// benchGuest is the guest a bench boots on symvirt and, for its baseline,
// on plain QEMU: the test guest.
type benchGuest struct {
	kernel, initrd string
}

// cmdline is the guest's kernel command line on either side.
func (g benchGuest) cmdline() string {
	return "console=ttyS0 quiet symvirt.counter=1"
}

// startBenchVM creates and starts a bench VM on h (g's guest, a
// passthrough-tagged NIC; shared nil: the host's default RAM) and waits
// until its guest runs.
func startBenchVM(ctx context.Context, t *testing.T, h *Host, name string, mem Size, g benchGuest, shared *bool) *VM {
	t.Helper()
	vm, err := h.Create(Spec{Name: name, Memory: mem, VCPUs: 1, Kernel: g.kernel, Initrd: g.initrd,
		Append: g.cmdline(), SharedMemory: shared,
		NICs: []NIC{{ID: "pt0", Model: "vmxnet3", Backend: "user", Passthrough: true, Pool: "nic"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-counter 3`))
	return vm
}

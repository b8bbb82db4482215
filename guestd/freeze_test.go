package guestd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/ebpf/taint"
	"github.com/symvirt/symvirt/guestproto"
)

// The freezer tests move real processes between real cgroups, on a cgroup2
// hierarchy mounted for the test (inside the test guest: the one its init
// mounted at /sys/fs/cgroup). Only processes the test started are ever
// candidates (freezeHooks.scope): the machine running the tests is never
// frozen.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	why := "needs root: mounts cgroup2 and moves processes between cgroups"
	if os.Getenv("SYMVIRT_REQUIRE_QEMU") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// eventually polls cond for up to d.
func eventually(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// pidSet is the scope of a test's freezer: the processes it started.
type pidSet struct {
	mu   sync.Mutex
	pids map[int]bool
}

func (s *pidSet) add(pid int) {
	s.mu.Lock()
	s.pids[pid] = true
	s.mu.Unlock()
}

func (s *pidSet) has(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pids[pid]
}

// stubTaint is a taint.Source whose tainted processes the test decides.
type stubTaint struct {
	mu   sync.Mutex
	pids map[int]bool
}

func (s *stubTaint) set(pid int, tainted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tainted {
		s.pids[pid] = true
	} else {
		delete(s.pids, pid)
	}
}

func (s *stubTaint) Tainted() []taint.Taint {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []taint.Taint
	for pid := range s.pids {
		out = append(out, taint.Taint{PID: pid, Kind: taint.KindConnect, Since: time.Now()})
	}
	slices.SortFunc(out, func(a, b taint.Taint) int { return a.PID - b.PID })
	return out
}

func (s *stubTaint) IsTainted(pid int) (taint.Taint, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pids[pid] {
		return taint.Taint{}, false
	}
	return taint.Taint{PID: pid, Kind: taint.KindConnect}, true
}

func (s *stubTaint) Reset(pid int) error { s.set(pid, false); return nil }

func (s *stubTaint) Counts() (uint64, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.pids)), uint64(len(s.pids))
}

func (s *stubTaint) tainted(pid int) bool { _, ok := s.IsTainted(pid); return ok }

// testHier is a test's cgroup2 hierarchy, the names it uses there, and the
// processes it started.
type testHier struct {
	t     *testing.T
	mount string // the hierarchy
	root  string // Config.CgroupRoot: mount, or "" in the guest (found in mountinfo)
	group string // the frozen cgroup's name
	state string // the freezer's state file
	scope *pidSet
	stub  *stubTaint

	mu   sync.Mutex
	subs []string // cgroups the test made, to remove
}

func newTestHier(t *testing.T) *testHier {
	t.Helper()
	requireRoot(t)
	h := &testHier{
		t:     t,
		group: "svtest-frozen-" + randHex(4),
		state: filepath.Join(t.TempDir(), "freeze.json"),
		scope: &pidSet{pids: map[int]bool{}},
		stub:  &stubTaint{pids: map[int]bool{}},
	}
	if inGuest {
		// What the test guest is for: the hierarchy its init mounted.
		m, err := newFreezer(Config{Logger: testLogger(t)}).cgroupMount(false)
		if err != nil || m != "/sys/fs/cgroup" {
			t.Fatalf("cgroup2 hierarchy found in the guest: %q, %v; want /sys/fs/cgroup", m, err)
		}
		h.mount = m
	} else {
		dir := t.TempDir()
		if out, err := exec.Command("mount", "-t", "cgroup2", "none", dir).CombinedOutput(); err != nil {
			t.Fatalf("mount -t cgroup2 none %s: %v\n%s", dir, err, out)
		}
		t.Cleanup(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		h.mount, h.root = dir, dir
	}
	// Registered before any helper starts, so it runs after they are killed.
	t.Cleanup(h.cleanup)
	return h
}

// cleanup removes the test's cgroups, thawing and emptying them first.
func (h *testHier) cleanup() {
	h.mu.Lock()
	dirs := append([]string{filepath.Join(h.mount, h.group)}, h.subs...)
	h.mu.Unlock()
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		writeCg(filepath.Join(d, "cgroup.freeze"), "0")
		pids, _ := readPIDs(d)
		for _, pid := range pids {
			movePID(h.mount, pid)
		}
		var err error
		for range 100 { // killed helpers leave as they are reaped
			if err = unix.Rmdir(d); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			h.t.Errorf("cannot remove test cgroup %s: %v", d, err)
		}
	}
}

// configure points a guestd's Config at the test's hierarchy, state file,
// scope and stub tracker.
func (h *testHier) configure(c *Config) {
	c.CgroupRoot = h.root
	c.FreezeState = h.state
	c.freezeTest = &freezeHooks{scope: h.scope.has, group: h.group}
	c.taintSource = h.stub
}

// freezer makes a freezer like Run's; Cleanup thaws it.
func (h *testHier) freezer(mutate func(*Config)) *freezer {
	cfg := Config{Logger: testLogger(h.t)}
	h.configure(&cfg)
	if mutate != nil {
		mutate(&cfg)
	}
	cfg.setDefaults()
	f := newFreezer(cfg)
	h.t.Cleanup(func() { f.thaw("test cleanup") })
	return f
}

func (h *testHier) frozenDir() string { return filepath.Join(h.mount, h.group) }

// start starts a helper process in the test's scope; Cleanup kills it.
func (h *testHier) start(cmd *exec.Cmd) int {
	h.t.Helper()
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	pid := cmd.Process.Pid
	h.scope.add(pid)
	h.t.Cleanup(func() {
		// SIGKILL reaches a task frozen by cgroup v2 too.
		cmd.Process.Kill()
		cmd.Wait()
	})
	return pid
}

// busy starts a busy loop: its CPU time shows whether it runs.
func (h *testHier) busy() int {
	return h.start(exec.Command("sh", "-c", "while :; do :; done"))
}

func (h *testHier) sleeper() int {
	return h.start(exec.Command("sleep", "1000"))
}

// sub makes a cgroup for helpers to come from (not the root: the freezer
// must put them back where they were) and returns its path in the
// hierarchy.
func (h *testHier) sub() string {
	h.t.Helper()
	name := h.group + "-orig" + randHex(2)
	dir := filepath.Join(h.mount, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	h.mu.Lock()
	h.subs = append(h.subs, dir)
	h.mu.Unlock()
	return "/" + name
}

func (h *testHier) moveTo(cg string, pid int) {
	h.t.Helper()
	if err := movePID(filepath.Join(h.mount, cg), pid); err != nil {
		h.t.Fatalf("move %d to %s: %v", pid, cg, err)
	}
}

func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	cg, err := procCgroup(pid)
	if err != nil {
		t.Fatal(err)
	}
	return cg
}

func cpuOf(t *testing.T, pid int) uint64 {
	t.Helper()
	st, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st.cpu
}

// assertFrozen: the processes are in the frozen cgroup, which the kernel
// reports frozen. (/proc/PID/stat cannot tell: a task frozen by cgroup v2
// shows as sleeping.)
func (h *testHier) assertFrozen(pids ...int) {
	h.t.Helper()
	for _, pid := range pids {
		if cg := cgroupOf(h.t, pid); cg != "/"+h.group {
			h.t.Errorf("process %d is in %s, not in the frozen cgroup /%s", pid, cg, h.group)
		}
	}
	if ok, err := cgFrozen(h.frozenDir()); err != nil || !ok {
		h.t.Errorf("cgroup.events of %s: frozen=%v (%v), want frozen 1", h.frozenDir(), ok, err)
	}
}

// assertStill: a busy loop that does not get CPU time is not running.
func assertStill(t *testing.T, pid int) {
	t.Helper()
	before := cpuOf(t, pid)
	time.Sleep(500 * time.Millisecond)
	if after := cpuOf(t, pid); after != before {
		t.Errorf("frozen busy loop %d ran: CPU time %d -> %d ticks", pid, before, after)
	}
}

// assertRunning: a busy loop gets CPU time.
func assertRunning(t *testing.T, pid int) {
	t.Helper()
	before := cpuOf(t, pid)
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(50 * time.Millisecond) {
		if cpuOf(t, pid) > before+2 {
			return
		}
	}
	t.Errorf("busy loop %d does not run: CPU time stays at %d ticks", pid, before)
}

// assertBack: every process is back in its cgroup, the frozen cgroup is
// gone, and so is the state file.
func (h *testHier) assertBack(want map[int]string) {
	h.t.Helper()
	for pid, cg := range want {
		if got := cgroupOf(h.t, pid); got != cg {
			h.t.Errorf("process %d is in %s after the thaw, want %s", pid, got, cg)
		}
	}
	if _, err := os.Stat(h.frozenDir()); !errors.Is(err, os.ErrNotExist) {
		h.t.Errorf("frozen cgroup %s still there (%v)", h.frozenDir(), err)
	}
	if _, err := os.Stat(h.state); !errors.Is(err, os.ErrNotExist) {
		h.t.Errorf("state file %s still there (%v)", h.state, err)
	}
}

// ---- freezer ----

func TestFreezerFreezesUntaintedOnly(t *testing.T) {
	h := newTestHier(t)
	busy, tbusy, sleeper := h.busy(), h.busy(), h.sleeper()
	orig := h.sub()
	h.moveTo(orig, sleeper)
	h.stub.set(tbusy, true)
	want := map[int]string{busy: cgroupOf(t, busy), tbusy: cgroupOf(t, tbusy), sleeper: orig}

	f := h.freezer(nil)
	res, err := f.freeze(ctxFor(t, 10*time.Second), h.stub.tainted)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("freeze: %+v", res)
	if res.Frozen != 2 || !res.Settled || res.Skipped["tainted"] != 1 {
		t.Errorf("freeze result %+v, want 2 frozen, settled, 1 skipped as tainted", res)
	}
	h.assertFrozen(busy, sleeper)
	assertStill(t, busy)
	assertRunning(t, tbusy)
	if cg := cgroupOf(t, tbusy); cg != want[tbusy] {
		t.Errorf("tainted process moved to %s", cg)
	}
	st, err := f.readState()
	if err != nil || st == nil {
		t.Fatalf("state file while frozen: %+v, %v", st, err)
	}
	recorded := map[int]string{}
	for _, p := range st.Procs {
		recorded[p.PID] = p.Cgroup
	}
	if recorded[busy] != want[busy] || recorded[sleeper] != orig || len(recorded) != 2 {
		t.Errorf("state file records %v, want busy %d in %s and sleeper %d in %s", recorded, busy, want[busy], sleeper, orig)
	}
	if f.frozenCount() != 2 {
		t.Errorf("frozenCount = %d", f.frozenCount())
	}

	if n, err := f.thaw("test"); err != nil || n != 2 {
		t.Fatalf("thaw = %d, %v; want 2 moved back", n, err)
	}
	h.assertBack(want)
	assertRunning(t, busy)
	if f.frozenCount() != 0 {
		t.Errorf("frozenCount after thaw = %d", f.frozenCount())
	}
	// Thawing again is harmless.
	if n, err := f.thaw("again"); n != 0 || err != nil {
		t.Errorf("second thaw = %d, %v", n, err)
	}
}

// What plan leaves running, on the real /proc (read only: nothing moves).
func TestFreezerPlanExemptions(t *testing.T) {
	h := newTestHier(t)
	plain := h.sleeper()
	tainted := h.sleeper()
	h.stub.set(tainted, true)

	// A process named like an allowlisted one (comm comes from the name it
	// was exec'd by).
	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "svallowed")
	if err := os.Symlink(sleepPath, link); err != nil {
		t.Fatal(err)
	}
	ac := exec.Command(link, "1000")
	ac.Args[0] = "sleep" // busybox (in the guest) picks its applet by argv[0]
	allowed := h.start(ac)

	// A reader of guestd's output pipe.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pipe, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", r.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	logger := exec.Command("sleep", "1000")
	logger.Stdin = r
	reader := h.start(logger)

	zc := exec.Command("true")
	if err := zc.Start(); err != nil {
		t.Fatal(err)
	}
	zombie := zc.Process.Pid
	eventually(t, "a zombie", 5*time.Second, func() bool {
		st, err := readStat(zombie)
		return err == nil && st.state == 'Z'
	})
	defer zc.Wait()

	f := h.freezer(func(c *Config) { c.FreezeAllow = []string{"svallowed"} })
	f.hooks.scope = nil // every process of the machine: plan moves nothing
	f.hooks.outPipes = []string{pipe}
	procs, skipped, err := f.plan(h.mount, h.stub.tainted)
	if err != nil {
		t.Fatal(err)
	}
	planned := map[int]frozenProc{}
	for _, p := range procs {
		planned[p.PID] = p
	}
	if p, ok := planned[plain]; !ok || p.Cgroup != cgroupOf(t, plain) || p.Comm != "sleep" || p.Start == 0 {
		t.Errorf("plain process %d planned as %+v (%v)", plain, p, ok)
	}
	kthread := 0
	for pid := 2; pid < 200 && kthread == 0; pid++ {
		if st, err := readStat(pid); err == nil && st.flags&pfKthread != 0 {
			kthread = pid
		}
	}
	exempt := map[string]int{"init": 1, "guestd": os.Getpid(), "tainted": tainted, "allowlist": allowed,
		"reads guestd's log": reader, "zombie": zombie, "kernel thread": kthread}
	if ppid := os.Getppid(); ppid > 1 {
		exempt["guestd's parent"] = ppid
	}
	for why, pid := range exempt {
		if pid == 0 {
			t.Errorf("no process to check %q with", why)
			continue
		}
		if _, ok := planned[pid]; ok {
			t.Errorf("%s (pid %d) would be frozen", why, pid)
		}
		if k := strings.TrimPrefix(why, "guestd's parent"); k != "" && skipped[k] == 0 {
			t.Errorf("no process skipped as %q: %v", k, skipped)
		}
	}
	t.Logf("would freeze %d processes; left running: %v", len(procs), skipped)
}

// A process the tracker learns is tainted only after it was frozen (its
// event was still on its way) is let go within moments.
func TestFreezerReleasesLateTaint(t *testing.T) {
	h := newTestHier(t)
	busy, other := h.busy(), h.sleeper()
	orig := cgroupOf(t, busy)
	f := h.freezer(nil)
	if _, err := f.freeze(ctxFor(t, 10*time.Second), h.stub.tainted); err != nil {
		t.Fatal(err)
	}
	h.assertFrozen(busy, other)
	h.stub.set(busy, true)
	eventually(t, "the tainted process to leave the frozen cgroup", 3*time.Second, func() bool {
		return cgroupOf(t, busy) == orig
	})
	assertRunning(t, busy)
	h.assertFrozen(other)
	// The count follows the move within the same re-check, a moment later.
	eventually(t, "the frozen count to drop to 1", 3*time.Second, func() bool { return f.frozenCount() == 1 })
	if _, err := f.thaw("test"); err != nil {
		t.Fatal(err)
	}
}

// The freezer thaws by itself after FreezeMax.
func TestFreezerMaxFrozen(t *testing.T) {
	h := newTestHier(t)
	busy := h.busy()
	orig := cgroupOf(t, busy)
	f := h.freezer(func(c *Config) { c.FreezeMax = 500 * time.Millisecond })
	if _, err := f.freeze(ctxFor(t, 10*time.Second), h.stub.tainted); err != nil {
		t.Fatal(err)
	}
	h.assertFrozen(busy)
	eventually(t, "the thaw at FreezeMax", 5*time.Second, func() bool { return cgroupOf(t, busy) == orig })
	assertRunning(t, busy)
	eventually(t, "the state file to go", 2*time.Second, func() bool {
		_, err := os.Stat(h.state)
		return errors.Is(err, os.ErrNotExist)
	})
	h.assertBack(map[int]string{busy: orig})
	if n, err := f.thaw("after the limit"); n != 0 || err != nil {
		t.Errorf("thaw after the limit = %d, %v", n, err)
	}
}

// A freeze that runs out of time is undone by thaw, like every failure.
func TestFreezerDeadline(t *testing.T) {
	h := newTestHier(t)
	busy := h.busy()
	orig := cgroupOf(t, busy)
	f := h.freezer(nil)
	f.hooks.afterMove = func(ctx context.Context) { <-ctx.Done() }
	_, err := f.freeze(ctxFor(t, 500*time.Millisecond), h.stub.tainted)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("freeze past its deadline = %v, want DeadlineExceeded", err)
	}
	if _, err := f.thaw("deadline"); err != nil {
		t.Fatal(err)
	}
	h.assertBack(map[int]string{busy: orig})
	assertRunning(t, busy)
}

// crash simulates a guestd that dies while processes are frozen: its
// watchdog stops, its memory is gone, only the state file and the frozen
// cgroup remain.
func crash(f *freezer) {
	f.mu.Lock()
	set := f.cur
	f.cur = nil
	f.mu.Unlock()
	if set != nil {
		set.stopOnce.Do(func() { close(set.stop) })
		<-set.done
	}
}

func TestFreezerRecoversAfterCrash(t *testing.T) {
	h := newTestHier(t)
	busy, sleeper := h.busy(), h.sleeper()
	orig := h.sub()
	h.moveTo(orig, sleeper)
	want := map[int]string{busy: cgroupOf(t, busy), sleeper: orig}
	f := h.freezer(nil)
	if _, err := f.freeze(ctxFor(t, 10*time.Second), h.stub.tainted); err != nil {
		t.Fatal(err)
	}
	h.assertFrozen(busy, sleeper)
	crash(f)
	assertStill(t, busy) // nobody thaws it now

	f2 := h.freezer(nil)
	if err := f2.recover(); err != nil {
		t.Fatal(err)
	}
	h.assertBack(want)
	assertRunning(t, busy)
}

// Without a state file (lost, or a cgroup frozen by hand), whatever is in
// the frozen cgroup is thawed and moved to the root.
func TestFreezerRecoversWithoutState(t *testing.T) {
	h := newTestHier(t)
	busy := h.busy()
	if err := os.Mkdir(h.frozenDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	h.moveTo("/"+h.group, busy)
	if err := writeCg(filepath.Join(h.frozenDir(), "cgroup.freeze"), "1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the hand-made freeze", 5*time.Second, func() bool { ok, _ := cgFrozen(h.frozenDir()); return ok })
	assertStill(t, busy)
	if err := h.freezer(nil).recover(); err != nil {
		t.Fatal(err)
	}
	h.assertBack(map[int]string{busy: "/"})
	assertRunning(t, busy)
}

func TestFindCgroup2(t *testing.T) {
	mountinfo := `22 1 0:21 / /proc rw,nosuid - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:38 /user.slice /mnt/sub rw,relatime - cgroup2 cgroup2 rw
41 31 0:38 / /sys/fs/cgroup/uni\040fied rw,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
42 31 0:38 / /second rw,relatime - cgroup2 cgroup2 rw
`
	if got := findCgroup2(strings.NewReader(mountinfo)); got != "/sys/fs/cgroup/uni fied" {
		t.Errorf("findCgroup2 = %q", got)
	}
	if got := findCgroup2(strings.NewReader("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")); got != "" {
		t.Errorf("findCgroup2 without cgroup2 = %q", got)
	}
	for cg, ok := range map[string]bool{"/": true, "/a/b": true, "/a/b/": true, "/../x": false, "/a/../b": false, "a": false, "": false} {
		if _, got := cgDir("/m", cg); got != ok {
			t.Errorf("cgDir(%q) ok = %v, want %v", cg, got, ok)
		}
	}
}

// With no cgroup2 mounted (cgroup v1 only), the freezer mounts one.
func TestFreezerMountsCgroup2(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "cgroup2")
	empty := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(empty, []byte("22 1 0:21 / /proc rw - proc proc rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFreezer(Config{Logger: testLogger(t), freezeTest: &freezeHooks{mountDir: dir, mountinfo: empty}})
	if m, err := f.cgroupMount(false); m != "" || err != nil {
		t.Fatalf("cgroupMount(false) = %q, %v; want nothing", m, err)
	}
	m, err := f.cgroupMount(true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if m != dir || !isCgroup2(dir) {
		t.Fatalf("cgroupMount(true) = %q (cgroup2: %v), want %s", m, isCgroup2(dir), dir)
	}
	// Once mounted, it is used again rather than mounted twice.
	if m, err := f.cgroupMount(true); m != dir || err != nil {
		t.Errorf("second cgroupMount = %q, %v", m, err)
	}
	// A configured root must be a cgroup2.
	f2 := newFreezer(Config{Logger: testLogger(t), CgroupRoot: t.TempDir()})
	if _, err := f2.cgroupMount(true); err == nil {
		t.Error("a CgroupRoot that is no cgroup2 was accepted")
	}
}

func TestParseStat(t *testing.T) {
	line := "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 3 0 0 20 0 1 0 123456 1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"
	st, err := parseStat(4242, []byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.comm != "a) b (c)" || st.state != 'S' || st.ppid != 1 || st.flags != 4194560 || st.start != 123456 || st.cpu != 20 {
		t.Errorf("parseStat = %+v", st)
	}
	if _, err := parseStat(1, []byte("1 (x) S 0")); err == nil {
		t.Error("a short stat line parsed")
	}
}

// ---- rounds through Run ----

// prepareFreeze runs a dependency-aware PREPARE.
func prepareFreeze(t *testing.T, h *guestproto.Host, id string, deadline time.Duration) error {
	t.Helper()
	return h.Prepare(ctxFor(t, deadline+10*time.Second), guestproto.Prepare{ID: id, Op: guestproto.OpMigrate, Deadline: deadline, Freeze: true})
}

func TestFreezeRoundResume(t *testing.T) {
	h := newTestHier(t)
	busy, tbusy, sleeper := h.busy(), h.busy(), h.sleeper()
	orig := h.sub()
	h.moveTo(orig, sleeper)
	h.stub.set(tbusy, true)
	want := map[int]string{busy: cgroupOf(t, busy), tbusy: cgroupOf(t, tbusy), sleeper: orig}
	e := startGuestd(t, func(c *Config) { h.configure(c); c.MetricsListen = freePort(t) })
	host, _ := e.host()
	app := e.app("solver")
	out := cooperate(t, app)

	if err := prepareFreeze(t, host, "m1", 10*time.Second); err != nil {
		t.Fatalf("Prepare with freeze: %v", err)
	}
	h.assertFrozen(busy, sleeper)
	assertStill(t, busy)
	assertRunning(t, tbusy)
	if cg := cgroupOf(t, tbusy); cg != want[tbusy] {
		t.Errorf("tainted process moved to %s", cg)
	}
	if _, err := os.Stat(h.state); err != nil {
		t.Errorf("no state file while frozen: %v", err)
	}
	m := scrape(t, e.metrics)
	for _, w := range []string{"symvirt_guestd_frozen_processes 2", "symvirt_guestd_tainted_processes 1", "symvirt_guestd_taint_events_total 1"} {
		if !strings.Contains(m, w) {
			t.Errorf("metrics lack %q:\n%s", w, m)
		}
	}
	// `symvirt taint list` works against guestd's socket.
	list, err := taint.Query(ctxFor(t, 5*time.Second), filepath.Join(e.dir, "taint.sock"))
	if err != nil || len(list) != 1 || list[0].PID != tbusy {
		t.Errorf("taint socket lists %+v, %v; want pid %d", list, err, tbusy)
	}

	if err := host.Resume(ctxFor(t, 10*time.Second), "m1", guestproto.OutcomeMigrated); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	h.assertBack(want)
	assertRunning(t, busy)
	if o := recvOutcome(t, out); o.Outcome != guestproto.OutcomeMigrated {
		t.Errorf("application got %+v", o)
	}
	if m := scrape(t, e.metrics); !strings.Contains(m, "symvirt_guestd_frozen_processes 0") {
		t.Errorf("metrics after RESUME:\n%s", m)
	}
}

func TestFreezeRoundAbort(t *testing.T) {
	h := newTestHier(t)
	busy := h.busy()
	want := map[int]string{busy: cgroupOf(t, busy)}
	e := startGuestd(t, h.configure)
	host, _ := e.host()
	if err := prepareFreeze(t, host, "m1", 10*time.Second); err != nil {
		t.Fatalf("Prepare with freeze: %v", err)
	}
	h.assertFrozen(busy)
	if err := host.Abort(ctxFor(t, 10*time.Second), "m1", "destination refused"); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	h.assertBack(want)
	assertRunning(t, busy)
}

func TestFreezeRoundDeadline(t *testing.T) {
	t.Run("prepare", func(t *testing.T) {
		// The PREPARE deadline runs out while freezing: REFUSED, and the
		// processes already moved are thawed and put back.
		h := newTestHier(t)
		busy := h.busy()
		want := map[int]string{busy: cgroupOf(t, busy)}
		moved := make(chan struct{})
		e := startGuestd(t, func(c *Config) {
			h.configure(c)
			c.freezeTest.afterMove = func(ctx context.Context) { close(moved); <-ctx.Done() }
		})
		host, _ := e.host()
		err := prepareFreeze(t, host, "m1", 2*time.Second)
		var re *guestproto.RefusedError
		if !errors.As(err, &re) || !strings.Contains(re.Reason, "freezing the untainted processes") || !strings.Contains(re.Reason, "deadline") {
			t.Fatalf("Prepare = %v, want REFUSED for the freeze's deadline", err)
		}
		<-moved
		eventually(t, "the undo", 10*time.Second, func() bool { return cgroupOf(t, busy) == want[busy] })
		eventually(t, "the state file to go", 5*time.Second, func() bool {
			_, err := os.Stat(h.state)
			return errors.Is(err, os.ErrNotExist)
		})
		h.assertBack(want)
		assertRunning(t, busy)
	})
	t.Run("freeze-max", func(t *testing.T) {
		// READY, then no RESUME for FreezeMax: thawed, the round stays READY.
		h := newTestHier(t)
		busy := h.busy()
		want := map[int]string{busy: cgroupOf(t, busy)}
		e := startGuestd(t, func(c *Config) { h.configure(c); c.FreezeMax = time.Second })
		host, _ := e.host()
		if err := prepareFreeze(t, host, "m1", 10*time.Second); err != nil {
			t.Fatalf("Prepare with freeze: %v", err)
		}
		h.assertFrozen(busy)
		eventually(t, "the thaw at FreezeMax", 5*time.Second, func() bool { return cgroupOf(t, busy) == want[busy] })
		assertRunning(t, busy)
		if ack, err := host.Handshake(ctxFor(t, 5*time.Second)); err != nil || ack.State != guestproto.StateReady || ack.PendingID != "m1" {
			t.Errorf("after the thaw: %+v, %v; want still ready m1", ack, err)
		}
		if err := host.Resume(ctxFor(t, 10*time.Second), "m1", guestproto.OutcomeMigrated); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		h.assertBack(want)
	})
}

// guestd stopping while processes are frozen thaws them.
func TestFreezeRoundStopThaws(t *testing.T) {
	h := newTestHier(t)
	busy := h.busy()
	want := map[int]string{busy: cgroupOf(t, busy)}
	e := startGuestd(t, h.configure)
	host, _ := e.host()
	if err := prepareFreeze(t, host, "m1", 10*time.Second); err != nil {
		t.Fatalf("Prepare with freeze: %v", err)
	}
	h.assertFrozen(busy)
	e.stop()
	h.assertBack(want)
	assertRunning(t, busy)
}

// A guestd that starts after one died with processes frozen thaws them
// before it serves anything.
func TestFreezeRoundRecoveryOnStart(t *testing.T) {
	h := newTestHier(t)
	busy, sleeper := h.busy(), h.sleeper()
	orig := h.sub()
	h.moveTo(orig, sleeper)
	want := map[int]string{busy: cgroupOf(t, busy), sleeper: orig}
	f := h.freezer(nil)
	if _, err := f.freeze(ctxFor(t, 10*time.Second), h.stub.tainted); err != nil {
		t.Fatal(err)
	}
	crash(f)
	h.assertFrozen(busy, sleeper)
	startGuestd(t, h.configure) // returns once guestd listens: recovery is done by then
	h.assertBack(want)
	assertRunning(t, busy)
}

// Without a tracker (or a cgroup v2 freezer), a freeze round is refused at
// once, saying why; plain rounds still work.
func TestFreezeRoundWithoutTracker(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*Config)
		why    string
	}{
		{"disabled", nil, "the tracker is disabled (--taint=false)"},
		{"cannot load", func(c *Config) {
			c.Taint = true
			c.openTaint = func(taint.Options) (taint.Source, io.Closer, error) {
				return nil, nil, errors.New("taint: kernel BTF is missing (CONFIG_DEBUG_INFO_BTF)")
			}
		}, "kernel BTF is missing"},
		{"no cgroup2", func(c *Config) {
			c.taintSource = &stubTaint{pids: map[int]bool{}}
			c.CgroupRoot = t.TempDir()
		}, "is not a cgroup2 mount"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := startGuestd(t, c.mutate)
			host, _ := e.host()
			err := prepareFreeze(t, host, "m1", 5*time.Second)
			var re *guestproto.RefusedError
			if !errors.As(err, &re) || !strings.HasPrefix(re.Reason, "dependency-aware migration needs the ") || !strings.Contains(re.Reason, c.why) {
				t.Fatalf("Prepare with freeze = %v, want REFUSED naming %q", err, c.why)
			}
			if ack, err := host.Handshake(ctxFor(t, 5*time.Second)); err != nil || ack.State != guestproto.StateIdle {
				t.Errorf("after the refusal: %+v, %v; want idle", ack, err)
			}
			if err := host.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "m2", Op: guestproto.OpMigrate, Deadline: 5 * time.Second}); err != nil {
				t.Fatalf("plain Prepare: %v", err)
			}
			if err := host.Resume(ctxFor(t, 10*time.Second), "m2", guestproto.OutcomeMigrated); err != nil {
				t.Fatalf("Resume: %v", err)
			}
		})
	}
}

// ---- the real tracker ----

var (
	heldConn net.Conn
	spin     uint64
)

const (
	freezeHelperEnv     = "SYMVIRT_FREEZE_HELPER"
	freezeHelperAddrEnv = "SYMVIRT_FREEZE_ADDR"
)

// TestFreezeHelper is a helper process of the freezer tests: "listen" holds
// TCP connections on ADDR, "connect" connects to ADDR (it becomes tainted)
// and then loops, so that its CPU time shows it runs.
func TestFreezeHelper(t *testing.T) {
	addr := os.Getenv(freezeHelperAddrEnv)
	switch os.Getenv(freezeHelperEnv) {
	case "listen":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			os.Exit(2)
		}
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(3)
			}
			held = append(held, c)
		}
	case "connect":
		var c net.Conn
		for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
			var err error
			if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
				break
			}
			if time.Since(start) > 20*time.Second {
				os.Exit(2)
			}
		}
		heldConn = c // reachable: a collected conn would be closed
		for {
			spin++
		}
	case "guestd":
		// guestd of TestFreezeInVM: the real tracker, the guest's own
		// cgroup2 hierarchy, every process of the guest a candidate.
		log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug})).With("guestd", "vm")
		err := Run(context.Background(), Config{Taint: true, NICWait: 2 * time.Second, Heartbeat: time.Second,
			FreezeMax: 2 * time.Minute, Logger: log})
		fmt.Println("freeze-guestd exited:", err)
		os.Exit(1)
	case "connect-count":
		// In the test guest (TestFreezeInVM): once guestd's tracker serves
		// its socket, connect to the host, check that the tracker tainted
		// us, then count on the console.
		sock := taint.DefaultSocket
		for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if time.Since(start) > time.Minute {
				fmt.Println("freeze-helper: no taint socket")
				os.Exit(2)
			}
		}
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			fmt.Println("freeze-helper: connect:", err)
			os.Exit(2)
		}
		heldConn = c
		for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			tt, ok, err := taint.NewClient(sock).Get(ctx, os.Getpid())
			cancel()
			if ok {
				fmt.Printf("freeze-helper tainted kind=%s peer=%s\n", tt.Kind, tt.Peer)
				break
			}
			if time.Since(start) > 30*time.Second {
				fmt.Println("freeze-helper: not tainted:", err)
				os.Exit(2)
			}
		}
		for n := 0; ; n++ {
			fmt.Printf("freeze-tainted %d\n", n)
			time.Sleep(200 * time.Millisecond)
		}
	default:
		t.Skip("helper process of the freezer tests")
	}
}

// newOutsideNS makes a network namespace joined to ours by a veth pair: the
// world outside the machine, for the tracker. It returns the namespace and
// the address of its end.
func newOutsideNS(t *testing.T) (ns, peer string) {
	t.Helper()
	id := randHex(3)
	used, _ := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	subnet := 0
	for i := 0; i < 50; i++ {
		b := make([]byte, 1)
		rand.Read(b)
		subnet = 100 + int(b[0])%100
		if !strings.Contains(string(used), fmt.Sprintf("10.98.%d.", subnet)) {
			break
		}
	}
	ns = "svfreeze-" + id
	hostIf, nsIf := "svfh"+id, "svfn"+id
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "link", "del", hostIf).Run()
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	peer = fmt.Sprintf("10.98.%d.2", subnet)
	run("ip", "netns", "add", ns)
	run("ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	run("ip", "link", "set", nsIf, "netns", ns)
	run("ip", "addr", "add", fmt.Sprintf("10.98.%d.1/24", subnet), "dev", hostIf)
	run("ip", "link", "set", hostIf, "up")
	run("ip", "-n", ns, "addr", "add", peer+"/24", "dev", nsIf)
	run("ip", "-n", ns, "link", "set", nsIf, "up")
	run("ip", "-n", ns, "link", "set", "lo", "up")
	return ns, peer
}

// The real eBPF tracker: a process connected to the outside keeps running
// while an untainted busy loop is frozen.
func TestFreezeRoundRealTracker(t *testing.T) {
	if inGuest {
		t.Skip("TestFreezeInVM covers the tracker in the guest")
	}
	h := newTestHier(t)
	var why string
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		why = "needs kernel BTF for the eBPF tracker"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs ip (iproute2)"
	}
	if why != "" {
		if os.Getenv("SYMVIRT_REQUIRE_QEMU") == "1" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	ns, peer := newOutsideNS(t)
	addr := net.JoinHostPort(peer, "7300")
	helper := func(mode string, prefix ...string) *exec.Cmd {
		args := append(prefix, os.Args[0], "-test.run=^TestFreezeHelper$")
		c := exec.Command(args[0], args[1:]...)
		c.Env = append(os.Environ(), freezeHelperEnv+"="+mode, freezeHelperAddrEnv+"="+addr)
		return c
	}
	listener := helper("listen", "ip", "netns", "exec", ns)
	if err := listener.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Process.Kill(); listener.Wait() })

	e := startGuestd(t, func(c *Config) {
		h.configure(c)
		c.taintSource = nil
		c.Taint = true
		c.MetricsListen = freePort(t)
	})
	sock := filepath.Join(e.dir, "taint.sock")
	conn := h.start(helper("connect"))
	busy := h.busy()
	tainted := func(pid int) bool {
		tt, ok, err := taint.NewClient(sock).Get(ctxFor(t, 5*time.Second), pid)
		if err != nil {
			t.Fatalf("taint socket: %v", err)
		}
		if ok {
			t.Logf("process %d tainted: %+v", pid, tt)
		}
		return ok
	}
	eventually(t, "the connected helper to be tainted", 20*time.Second, func() bool { return tainted(conn) })
	if tainted(busy) {
		t.Fatal("the busy loop is tainted")
	}
	connCg := cgroupOf(t, conn)
	want := map[int]string{busy: cgroupOf(t, busy), conn: connCg}

	host, _ := e.host()
	if err := prepareFreeze(t, host, "m1", 10*time.Second); err != nil {
		t.Fatalf("Prepare with freeze: %v", err)
	}
	h.assertFrozen(busy)
	assertStill(t, busy)
	assertRunning(t, conn)
	if cg := cgroupOf(t, conn); cg != connCg {
		t.Errorf("the tainted helper was moved to %s", cg)
	}
	if m := scrape(t, e.metrics); !strings.Contains(m, "symvirt_guestd_frozen_processes 1") || !strings.Contains(m, "symvirt_guestd_tainted_processes ") {
		t.Errorf("metrics:\n%s", m)
	}
	if err := host.Resume(ctxFor(t, 10*time.Second), "m1", guestproto.OutcomeMigrated); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	h.assertBack(want)
	assertRunning(t, busy)
}

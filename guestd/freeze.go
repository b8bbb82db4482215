package guestd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/ebpf/taint"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"github.com/symvirt/symvirt/internal/mountinfo"
)

// Defaults of the freezer (dependency-aware migration; see doc.go).
const (
	// DefaultCgroupMount is where guestd mounts a cgroup2 hierarchy when
	// none is mounted (a cgroup v1 or hybrid system without the unified
	// mount).
	DefaultCgroupMount = "/run/symvirt/cgroup2"
	// DefaultFreezeState records what the freezer moved, so that a guestd
	// restarted after a crash can undo it. /run: a reboot thaws anyway.
	DefaultFreezeState = "/run/symvirt/freeze.json"
	// DefaultFreezeMax bounds how long processes stay frozen after READY.
	DefaultFreezeMax = 10 * time.Minute
	// FrozenCgroup is the cgroup, below the hierarchy's root, that holds
	// the frozen processes.
	FrozenCgroup = "symvirt-frozen"
)

// DefaultFreezeAllow lists the processes (by comm) that are never frozen:
// local hubs that tainted processes use without the tracker passing the
// taint on. First those it never taints over IPC (taint.DefaultIPCExempt:
// PID 1, journald, the D-Bus daemons): the exemption keeps one tainted
// message from tainting them and, through them, everything, but it also
// means a hub can be untainted while tainted processes depend on it; a
// tainted service logging to a frozen journald, or calling over a frozen
// D-Bus, would block. Then systemd-resolved ("systemd-resolve", comm being
// 15 bytes at most): name lookups go to it over loopback UDP, which passes
// no taint on. Everything else untainted is frozen; applications blocked in
// their SYNC are harmless to freeze.
var DefaultFreezeAllow = append(slices.Clone(taint.DefaultIPCExempt), "systemd-resolve")

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags (field 9).
const pfKthread = 0x00200000

// freezeSettle bounds the wait for cgroup.events to report "frozen 1".
// A task frozen in the kernel (uninterruptible sleep, a vfork parent) only
// stops when it returns to user space; the round does not wait for it
// longer than this (it is frozen as soon as it gets there).
const freezeSettle = 5 * time.Second

// recheckEvery is how often, while frozen, the members of the frozen cgroup
// are checked against the tracker: its events arrive asynchronously, so a
// process tainted just before it was frozen may be learnt of just after.
const recheckEvery = 250 * time.Millisecond

// freezeHooks are test hooks of the freezer (Config.freezeTest).
type freezeHooks struct {
	// scope limits the candidates: tests must not freeze the machine.
	scope func(pid int) bool
	// group replaces FrozenCgroup: tests share the host's one cgroup2
	// hierarchy (every cgroup2 mount shows the same one) and run in
	// parallel.
	group string
	// mountDir replaces DefaultCgroupMount; mountinfo replaces
	// /proc/self/mountinfo.
	mountDir, mountinfo string
	// outPipes replaces guestd's own stdout/stderr pipes ("pipe:[ino]").
	outPipes []string
	// afterMove runs once the processes are moved, before the freeze.
	afterMove func(ctx context.Context)
}

// frozenProc is one process the freezer moved.
type frozenProc struct {
	PID int `json:"pid"`
	// Start is /proc/PID/stat's starttime: a pid recorded for an exited
	// process and reused by another is not taken for it.
	Start uint64 `json:"start"`
	Comm  string `json:"comm"`
	// Cgroup is where it came from, in the hierarchy ("/" is the root).
	Cgroup string `json:"cgroup"`
}

// freezeState is the state file: written before any process is moved,
// removed once they are all thawed and back.
type freezeState struct {
	V      int          `json:"v"`
	Group  string       `json:"group"` // the frozen cgroup, in the hierarchy
	PID    int          `json:"guestd_pid"`
	Since  time.Time    `json:"since"`
	Procs  []frozenProc `json:"procs"`
	Reason string       `json:"reason,omitempty"`
}

// freezeResult describes a freeze, for the READY log.
type freezeResult struct {
	Frozen  int            // processes in the frozen cgroup at the end
	Skipped map[string]int // processes left running, by reason
	Settled bool           // cgroup.events reported "frozen 1" in time
	Took    time.Duration
}

// frozenSet is the freezer's state while processes are frozen.
type frozenSet struct {
	mount, dir string // the cgroup2 hierarchy and the frozen cgroup
	recs       map[int]frozenProc
	stopOnce   sync.Once
	stop       chan struct{} // ends the watchdog
	done       chan struct{} // closed by the watchdog when it ends; nil if none
}

// freezer moves untainted processes into a frozen cgroup v2 and back.
// Its methods are safe for concurrent use; freeze and thaw are serialised.
type freezer struct {
	log       *slog.Logger
	root      string // Config.CgroupRoot
	group     string
	state     string
	allow     map[string]bool
	maxFrozen time.Duration
	hooks     freezeHooks

	frozen atomic.Int64 // processes frozen now, for metrics

	mu  sync.Mutex
	cur *frozenSet // nil when nothing is frozen
}

func newFreezer(cfg Config) *freezer {
	f := &freezer{
		log:       cfg.Logger.With("component", "freezer"),
		root:      cfg.CgroupRoot,
		group:     FrozenCgroup,
		state:     cfg.FreezeState,
		allow:     make(map[string]bool),
		maxFrozen: cfg.FreezeMax,
	}
	if cfg.freezeTest != nil {
		f.hooks = *cfg.freezeTest
	}
	if f.hooks.group != "" {
		f.group = f.hooks.group
	}
	if f.hooks.mountDir == "" {
		f.hooks.mountDir = DefaultCgroupMount
	}
	if f.hooks.mountinfo == "" {
		f.hooks.mountinfo = "/proc/self/mountinfo"
	}
	allow := cfg.FreezeAllow
	if allow == nil {
		allow = DefaultFreezeAllow
	}
	for _, c := range allow {
		if c = strings.TrimSpace(c); c != "" {
			// /proc/PID/comm holds at most 15 bytes.
			f.allow[c[:min(len(c), 15)]] = true
		}
	}
	return f
}

// ---- /proc ----

// procStat is what the freezer reads of /proc/PID/stat.
type procStat struct {
	pid, ppid int
	comm      string
	state     byte
	flags     uint64
	start     uint64
	cpu       uint64 // utime+stime, clock ticks
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(pid, b)
}

// parseStat parses /proc/PID/stat. comm is between the first '(' and the
// last ')': it may itself hold spaces and parentheses.
func parseStat(pid int, b []byte) (procStat, error) {
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(string(b[j+1:])) // f[0] is field 3
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	st := procStat{pid: pid, comm: string(b[i+1 : j]), state: f[0][0]}
	var errs [5]error
	st.ppid, errs[0] = strconv.Atoi(f[1])
	st.flags, errs[1] = strconv.ParseUint(f[6], 10, 64)
	st.start, errs[2] = strconv.ParseUint(f[19], 10, 64)
	ut, e1 := strconv.ParseUint(f[11], 10, 64)
	stt, e2 := strconv.ParseUint(f[12], 10, 64)
	errs[3], errs[4] = e1, e2
	st.cpu = ut + stt
	if err := errors.Join(errs[:]...); err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return st, nil
}

// listPIDs lists the processes (thread groups: /proc lists no other tasks).
func listPIDs() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// ancestors returns pid and its ancestors up to (not including) PID 1.
func ancestors(pid int) map[int]bool {
	out := map[int]bool{}
	for p := pid; p > 1 && !out[p] && len(out) < 1024; {
		out[p] = true
		st, err := readStat(p)
		if err != nil {
			break
		}
		p = st.ppid
	}
	return out
}

// isKernelThread: PF_KTHREAD, or no executable (a zombie has none either,
// but zombies are skipped before this).
func isKernelThread(st procStat) bool {
	if st.flags&pfKthread != 0 {
		return true
	}
	_, err := os.Readlink("/proc/" + strconv.Itoa(st.pid) + "/exe")
	return errors.Is(err, fs.ErrNotExist)
}

// procCgroup returns the cgroup v2 path of pid (the "0::" line).
func procCgroup(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", err
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("/proc/%d/cgroup: no cgroup v2 line", pid)
}

// pipeHolders returns the processes that have one of the pipes open
// ("pipe:[ino]" as /proc/PID/fd links read).
func pipeHolders(pipes []string) map[int]bool {
	out := map[int]bool{}
	if len(pipes) == 0 {
		return out
	}
	pids, _ := listPIDs()
	for _, pid := range pids {
		dir := "/proc/" + strconv.Itoa(pid) + "/fd"
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && slices.Contains(pipes, l) {
				out[pid] = true
				break
			}
		}
	}
	return out
}

// ownOutputPipes returns guestd's stdout and stderr if they are pipes:
// whoever reads them (a logger) must keep running, else guestd blocks on
// its own log once the pipe is full and cannot answer RESUME.
func ownOutputPipes() []string {
	var out []string
	for _, fd := range []string{"1", "2"} {
		if l, err := os.Readlink("/proc/self/fd/" + fd); err == nil && strings.HasPrefix(l, "pipe:") && !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return out
}

// ---- cgroup v2 ----

// findCgroup2 returns the first mount point of a cgroup2 hierarchy's root in
// a mountinfo file ("" if none). Mounts of a subtree (root field not "/")
// are skipped: /proc/PID/cgroup paths are relative to the root.
func findCgroup2(r io.Reader) string {
	point := ""
	mountinfo.Read(r, func(m mountinfo.Mount) bool {
		if m.FSType == "cgroup2" && m.Root == "/" {
			point = m.Point
		}
		return point == ""
	})
	return point
}

func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// cgroupMount returns the cgroup2 hierarchy to use: Config.CgroupRoot, else
// a mounted one, else (if mount) one mounted at DefaultCgroupMount. "" with
// a nil error: none mounted and mount was false.
func (f *freezer) cgroupMount(mount bool) (string, error) {
	if f.root != "" {
		if !isCgroup2(f.root) {
			return "", fmt.Errorf("cgroup root %s is not a cgroup2 mount", f.root)
		}
		return f.root, nil
	}
	if mi, err := os.Open(f.hooks.mountinfo); err == nil {
		m := findCgroup2(mi)
		mi.Close()
		if m != "" && isCgroup2(m) {
			return m, nil
		}
	}
	if !mount {
		return "", nil
	}
	dir := f.hooks.mountDir
	if isCgroup2(dir) {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("no cgroup2 mounted, and cannot make %s: %w", dir, err)
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("no cgroup2 mounted, and mounting one at %s: %w", dir, err)
	}
	f.log.Info("mounted a cgroup2 hierarchy for the freezer", "dir", dir)
	return dir, nil
}

// cgDir is the directory of cgroup cg (a path in the hierarchy) under mount.
// Paths that leave the hierarchy (a process in another cgroup namespace
// shows "/../x") are refused.
func cgDir(mount, cg string) (string, bool) {
	if !strings.HasPrefix(cg, "/") {
		return "", false
	}
	// Clean drops a leading "..": a path it changes (but for a trailing
	// slash) is not one of ours.
	clean := path.Clean(cg)
	if clean != cg && clean+"/" != cg {
		return "", false
	}
	return filepath.Join(mount, clean), true
}

// writeCg writes one value to a cgroup file, as one write(2): cgroup files
// take a value per write.
func writeCg(file, val string) error {
	fh, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fh.WriteString(val)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	return err
}

// movePID moves process pid (all its threads: cgroup.procs takes a tgid)
// into the cgroup at dir.
func movePID(dir string, pid int) error {
	return writeCg(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid))
}

func readPIDs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for l := range strings.FieldsSeq(string(b)) {
		if pid, err := strconv.Atoi(l); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// cgFrozen reads "frozen" of cgroup.events.
func cgFrozen(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "frozen "); ok {
			return strings.TrimSpace(v) == "1", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events has no \"frozen\" (kernel without the cgroup v2 freezer, Linux 5.2+)", dir)
}

// ---- state file ----

func (f *freezer) writeState(st *freezeState) error {
	b, err := json.MarshalIndent(st, "", "\t")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.state), 0o755); err != nil {
		return fmt.Errorf("freezer state: %w", err)
	}
	if err := atomicfile.WriteFile(f.state, b, 0o600); err != nil {
		return fmt.Errorf("freezer state: %w", err)
	}
	return nil
}

// readState returns the state file, nil if there is none.
func (f *freezer) readState() (*freezeState, error) {
	b, err := os.ReadFile(f.state)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("freezer state: %w", err)
	}
	st := new(freezeState)
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("freezer state %s: %w", f.state, err)
	}
	return st, nil
}

// ---- freeze ----

// plan picks the processes to freeze: every process but PID 1, guestd and
// its ancestors, the readers of guestd's output pipes, zombies, kernel
// threads, the allowlist, the tainted, and those whose cgroup the freezer
// could not put them back into. skipped counts the rest by reason.
func (f *freezer) plan(mount string, tainted func(int) bool) (procs []frozenProc, skipped map[string]int, err error) {
	pids, err := listPIDs()
	if err != nil {
		return nil, nil, err
	}
	skipped = map[string]int{}
	self := ancestors(os.Getpid())
	pipes := f.hooks.outPipes
	if pipes == nil {
		pipes = ownOutputPipes()
	}
	loggers := pipeHolders(pipes)
	for _, pid := range pids {
		if f.hooks.scope != nil && !f.hooks.scope(pid) {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // exited
		}
		why, cg := "", ""
		switch {
		case pid == 1:
			why = "init"
		case self[pid]:
			why = "guestd"
		case loggers[pid]:
			why = "reads guestd's log"
		case st.state == 'Z' || st.state == 'X':
			why = "zombie"
		case isKernelThread(st):
			why = "kernel thread"
		case f.allow[st.comm]:
			why = "allowlist"
		case tainted(pid):
			why = "tainted"
		}
		if why == "" {
			cg, why = f.movable(mount, pid)
		}
		if why != "" {
			skipped[why]++
			if why != "kernel thread" {
				f.log.Debug("not freezing", "pid", pid, "comm", st.comm, "why", why)
			}
			continue
		}
		procs = append(procs, frozenProc{PID: pid, Start: st.start, Comm: st.comm, Cgroup: cg})
	}
	return procs, skipped, nil
}

// movable returns pid's cgroup if the freezer can put pid back into it
// afterwards, else why not.
func (f *freezer) movable(mount string, pid int) (cg, why string) {
	cg, err := procCgroup(pid)
	if err != nil {
		return "", "no cgroup v2"
	}
	dir, ok := cgDir(mount, cg)
	if !ok {
		f.log.Info("not freezing a process of another cgroup namespace", "pid", pid, "cgroup", cg)
		return "", "foreign cgroup"
	}
	if cg == "/"+f.group {
		return "", "already in the frozen cgroup"
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		f.log.Info("not freezing a process whose cgroup is not in the hierarchy", "pid", pid, "cgroup", cg, "mount", mount)
		return "", "foreign cgroup"
	}
	// A process of a threaded subtree cannot move whole (cgroup.procs
	// refuses it), and its threads could not all go back where they were.
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.type")); err == nil && strings.TrimSpace(string(b)) != "domain" {
		f.log.Info("not freezing a process of a threaded cgroup", "pid", pid, "cgroup", cg, "type", strings.TrimSpace(string(b)))
		return "", "threaded cgroup"
	}
	return cg, ""
}

// ready checks that freeze can work: a cgroup2 hierarchy (mounting one if
// needed) whose cgroups have the freezer (Linux 5.2+).
func (f *freezer) ready() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil {
		return errors.New("processes are frozen already")
	}
	mount, err := f.cgroupMount(true)
	if err != nil {
		return err
	}
	dir := filepath.Join(mount, f.group)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	_, err = os.Stat(filepath.Join(dir, "cgroup.freeze"))
	// Nothing left behind: a round refused later never gets to freeze (a
	// non-empty leftover stays, for freeze to deal with).
	_ = unix.Rmdir(dir)
	if err != nil {
		return fmt.Errorf("the cgroup2 hierarchy at %s has no freezer (Linux 5.2+): %w", mount, err)
	}
	return nil
}

// freeze moves every process that may be frozen (see plan) into the frozen
// cgroup and freezes it. On an error, what it did is undone by thaw (the
// caller's undo). tainted must be fast: it is asked about every process.
func (f *freezer) freeze(ctx context.Context, tainted func(int) bool) (res freezeResult, err error) {
	start := time.Now()
	defer func() { res.Took = time.Since(start) }()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil {
		return res, errors.New("processes are frozen already")
	}
	mount, err := f.cgroupMount(true)
	if err != nil {
		return res, err
	}
	dir := filepath.Join(mount, f.group)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return res, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	// Anything still in there was left by a guestd that died without a
	// state file we could read: out first, or it would be frozen blindly.
	if left, _ := readPIDs(dir); len(left) > 0 {
		f.log.Warn("the frozen cgroup is not empty: moving its processes out first", "dir", dir, "processes", len(left))
		if _, err := f.restore(mount, dir, nil); err != nil {
			return res, err
		}
	}
	if err := writeCg(filepath.Join(dir, "cgroup.freeze"), "0"); err != nil {
		return res, fmt.Errorf("the cgroup2 hierarchy at %s has no freezer (Linux 5.2+): %w", mount, err)
	}
	procs, skipped, err := f.plan(mount, tainted)
	if err != nil {
		return res, err
	}
	res.Skipped = skipped
	// The record comes before any move: from here on, a guestd that dies
	// is undone by the next one.
	st := &freezeState{V: 1, Group: "/" + f.group, PID: os.Getpid(), Since: time.Now().UTC(), Procs: procs}
	if err := f.writeState(st); err != nil {
		return res, err
	}
	set := &frozenSet{mount: mount, dir: dir, recs: make(map[int]frozenProc, len(procs)), stop: make(chan struct{})}
	for _, p := range procs {
		set.recs[p.PID] = p
	}
	f.cur = set
	if err := f.moveAll(ctx, dir, procs, res.Skipped); err != nil {
		return res, err
	}
	if f.hooks.afterMove != nil {
		f.hooks.afterMove(ctx)
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("moving processes to freeze: %w", context.Cause(ctx))
	}
	if err := writeCg(filepath.Join(dir, "cgroup.freeze"), "1"); err != nil {
		return res, fmt.Errorf("freeze %s: %w", dir, err)
	}
	if res.Settled, err = waitFrozen(ctx, dir, freezeSettle, frozenRecheck); err != nil {
		return res, err
	}
	if !res.Settled {
		f.log.Warn("not every process froze in time (busy in the kernel): they freeze when they return from it", "waited", freezeSettle)
	}
	// A process tainted between plan and freeze must not stay frozen.
	f.releaseTaintedLocked(set, tainted)
	pids, err := readPIDs(dir)
	if err != nil {
		return res, fmt.Errorf("read %s: %w", dir, err)
	}
	res.Frozen = len(pids)
	f.frozen.Store(int64(res.Frozen))
	set.done = make(chan struct{})
	go f.watch(set, tainted)
	return res, nil
}

// moveAll moves the planned processes into the cgroup dir (to be frozen),
// counting in skipped those the kernel would not move; exited ones are
// passed over.
func (f *freezer) moveAll(ctx context.Context, dir string, procs []frozenProc, skipped map[string]int) error {
	for _, p := range procs {
		if ctx.Err() != nil {
			return fmt.Errorf("moving processes to freeze: %w", context.Cause(ctx))
		}
		if ps, err := readStat(p.PID); err != nil || ps.start != p.Start {
			continue // exited, and its pid maybe taken by a process plan never saw
		}
		if err := movePID(dir, p.PID); err != nil && !errors.Is(err, syscall.ESRCH) {
			// E.g. a cgroup that enabled controllers meanwhile, or a
			// kernel's refusal we did not foresee: it keeps running.
			f.log.Warn("cannot move a process into the frozen cgroup: it keeps running", "pid", p.PID, "comm", p.Comm, "cgroup", p.Cgroup, "err", err)
			skipped["cannot move"]++
		}
	}
	return nil
}

// releaseTaintedLocked moves the members of the frozen cgroup that are
// tainted back to their cgroups, which thaws them.
func (f *freezer) releaseTaintedLocked(set *frozenSet, tainted func(int) bool) {
	pids, err := readPIDs(set.dir)
	if err != nil {
		f.log.Warn("cannot list the frozen processes", "dir", set.dir, "err", err)
		return
	}
	for _, pid := range pids {
		if !tainted(pid) {
			continue
		}
		dest := f.destination(set.mount, pid, set.recs)
		if err := movePID(dest, pid); err != nil && !errors.Is(err, syscall.ESRCH) {
			f.log.Error("cannot release a tainted process from the frozen cgroup", "pid", pid, "to", inHier(set.mount, dest), "err", err)
			continue
		}
		f.log.Info("released a process that turned out tainted", "pid", pid, "comm", set.recs[pid].Comm, "to", inHier(set.mount, dest))
	}
	if pids, err := readPIDs(set.dir); err == nil {
		f.frozen.Store(int64(len(pids)))
	}
}

// watch re-checks the frozen processes against the tracker, and thaws them
// all after maxFrozen: a host that vanished after READY must not leave the
// guest's work frozen for good; thawing only makes the migration slower.
func (f *freezer) watch(set *frozenSet, tainted func(int) bool) {
	defer close(set.done)
	tick := time.NewTicker(recheckEvery)
	defer tick.Stop()
	var limit <-chan time.Time
	if f.maxFrozen > 0 {
		t := time.NewTimer(f.maxFrozen)
		defer t.Stop()
		limit = t.C
	}
	for {
		select {
		case <-set.stop:
			return
		case <-tick.C:
			f.mu.Lock()
			if f.cur == set {
				f.releaseTaintedLocked(set, tainted)
			}
			f.mu.Unlock()
		case <-limit:
			f.mu.Lock()
			if f.cur == set {
				f.log.Warn("processes frozen for longer than the limit: thawing them (the migration goes on without freezing)", "limit", f.maxFrozen)
				if n, err := f.thawLocked(set); err != nil {
					f.log.Error("thaw", "why", "limit", "moved_back", n, "err", err)
				} else {
					f.log.Info("thawed", "why", "limit", "moved_back", n)
				}
			}
			f.mu.Unlock()
			return
		}
	}
}

// ---- thaw ----

// thaw undoes freeze: it unfreezes the cgroup, moves every process in it
// back where it came from, and removes the state file. Nothing frozen:
// nothing to do. It returns how many processes it moved back.
func (f *freezer) thaw(why string) (int, error) {
	f.mu.Lock()
	set := f.cur
	if set == nil {
		f.mu.Unlock()
		return 0, nil
	}
	n, err := f.thawLocked(set)
	f.mu.Unlock()
	if set.done != nil {
		<-set.done
	}
	if err != nil {
		f.log.Error("thaw", "why", why, "moved_back", n, "err", err)
	} else {
		f.log.Info("thawed", "why", why, "moved_back", n)
	}
	return n, err
}

func (f *freezer) thawLocked(set *frozenSet) (int, error) {
	set.stopOnce.Do(func() { close(set.stop) })
	f.cur = nil
	n, err := f.restore(set.mount, set.dir, set.recs)
	f.frozen.Store(0)
	if !errors.Is(err, errStillFrozen) {
		// Everything runs again: nothing is left for a restart to undo.
		if rerr := os.Remove(f.state); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("remove freezer state: %w", rerr))
		}
	}
	return n, err
}

var errStillFrozen = errors.New("cannot unfreeze")

// restore unfreezes the cgroup at dir and moves its members out: each to
// the cgroup recorded for it (or for its nearest recorded ancestor: a child
// forked between the move and the freeze), else to the hierarchy's root.
// It removes the cgroup when it is empty.
func (f *freezer) restore(mount, dir string, recs map[int]frozenProc) (int, error) {
	// Unfreeze first: whatever else fails, the processes run again.
	if err := writeCg(filepath.Join(dir, "cgroup.freeze"), "0"); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil // no cgroup, nothing in it
		}
		return 0, fmt.Errorf("%w %s: %w", errStillFrozen, dir, err)
	}
	moved := 0
	// Members may fork while we move them: go round until none is left.
	for range 10 {
		pids, err := readPIDs(dir)
		if err != nil || len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			dest := f.destination(mount, pid, recs)
			err := movePID(dest, pid)
			if err != nil && dest != mount && !errors.Is(err, syscall.ESRCH) {
				f.log.Warn("cannot move a thawed process back to its cgroup: moving it to the root", "pid", pid, "to", inHier(mount, dest), "err", err)
				dest = mount
				err = movePID(dest, pid)
			}
			switch {
			case err == nil:
				moved++
			case !errors.Is(err, syscall.ESRCH):
				f.log.Error("cannot move a thawed process out of the frozen cgroup", "pid", pid, "err", err)
			}
		}
	}
	if left, err := readPIDs(dir); err == nil && len(left) > 0 {
		return moved, fmt.Errorf("%d processes are still in %s (thawed, but not back in their cgroups)", len(left), dir)
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		f.log.Debug("cannot remove the frozen cgroup", "dir", dir, "err", err)
	}
	return moved, nil
}

// destination is the cgroup directory pid goes back to.
func (f *freezer) destination(mount string, pid int, recs map[int]frozenProc) string {
	for p, n := pid, 0; p > 1 && n < 64; n++ {
		st, err := readStat(p)
		if err != nil {
			break
		}
		if r, ok := recs[p]; ok && r.Start == st.start {
			return existingCgroup(mount, r.Cgroup)
		}
		p = st.ppid
	}
	return mount
}

// inHier is the cgroup of directory dir, for logs.
func inHier(mount, dir string) string {
	if r, err := filepath.Rel(mount, dir); err == nil && !strings.HasPrefix(r, "..") {
		return path.Clean("/" + r)
	}
	return dir
}

// existingCgroup is the directory of cg, or of its nearest ancestor that
// still exists: a cgroup emptied by the freeze may have been removed (by
// systemd, say) meanwhile.
func existingCgroup(mount, cg string) string {
	dir, ok := cgDir(mount, cg)
	if !ok {
		return mount
	}
	for dir != mount && len(dir) > len(mount) {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			return dir
		}
		dir = filepath.Dir(dir)
	}
	return mount
}

// ---- recovery ----

// recover undoes what a guestd that died while processes were frozen left:
// the state file's record, or, without one, any process in the frozen
// cgroup (back to the root). Run calls it before anything else.
func (f *freezer) recover() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil {
		return nil
	}
	st, err := f.readState()
	if err != nil {
		f.log.Warn("unreadable freezer state: thawing the frozen cgroup without it", "err", err)
	}
	// Mount a hierarchy only if a state file says something may be frozen.
	mount, merr := f.cgroupMount(st != nil || err != nil)
	if merr != nil {
		return fmt.Errorf("recover frozen processes: %w", merr)
	}
	if mount == "" {
		return nil
	}
	group, recs := "/"+f.group, map[int]frozenProc{}
	if st != nil {
		if st.Group != "" {
			group = st.Group
		}
		for _, p := range st.Procs {
			recs[p.PID] = p
		}
	}
	dir, ok := cgDir(mount, group)
	if !ok || dir == mount {
		return fmt.Errorf("recover frozen processes: bad group %q in %s", group, f.state)
	}
	pids, _ := readPIDs(dir)
	if st == nil && err == nil && len(pids) == 0 {
		if _, serr := os.Stat(dir); serr == nil {
			// An empty leftover: unfreeze and remove it, quietly.
			_, rerr := f.restore(mount, dir, nil)
			return rerr
		}
		return nil
	}
	f.log.Warn("thawing processes that an earlier guestd left frozen", "cgroup", dir, "processes", len(pids), "state", f.state)
	n, rerr := f.restore(mount, dir, recs)
	if rerr != nil {
		return fmt.Errorf("recover frozen processes: %w", rerr)
	}
	if err := os.Remove(f.state); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("recover frozen processes: %w", err)
	}
	f.log.Info("recovered frozen processes", "moved_back", n)
	return nil
}

// frozenCount is how many processes are frozen now.
func (f *freezer) frozenCount() int { return int(f.frozen.Load()) }

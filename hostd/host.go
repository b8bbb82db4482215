package hostd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/hostd/snapshot"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"github.com/symvirt/symvirt/internal/names"
	"github.com/symvirt/symvirt/qmp"
)

// Host manages the VMs of one host. QEMU processes run in their own session
// and are not tied to hostd's lifetime: New re-adopts the ones still running.
type Host struct {
	started time.Time
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu  sync.Mutex
	vms map[string]*VM

	// Restart checks binary ("": hostd's own) and returns what replaces
	// the hostd process with it (set by the daemon); VMs are untouched.
	Restart func(binary string) (exec func() error, err error)
	// PeerTLS, when set, is how this hostd reaches other hostds (the
	// destination of a migration) over mutual TLS.
	PeerTLS *tls.Config
	// PeerAuth, when set, judges peer hostds' migration grants.
	PeerAuth *PeerAuth
	// InsecureAPI: the TCP API listens without TLS (reported by GET
	// /v1/host: anyone who reaches it is root here).
	InsecureAPI bool

	steps *stepState
	stop  context.CancelFunc
	// keys sign the checkpoint manifests this host writes and verify
	// the ones it restores (sign.go).
	keys *manifestKeys
}

// VM is one VM known to this host.
type VM struct {
	h    *Host
	name string
	dir  string
	log  *slog.Logger

	// op serialises long operations on one VM; TryLock failure is ErrBusy.
	op sync.Mutex

	mu        sync.Mutex
	spec      Spec
	rt        runtimeState
	mon       *qmp.Client
	exited    chan struct{}   // closed when the QEMU process is gone
	operation string          // what the VM is doing now, for status
	live      *liveSave       // a live checkpoint still streaming
	armed     *snapshot.Armed // a live checkpoint made ready before the job's cut
	attachMu  sync.Mutex
	stoppedAt time.Time // when hostd stopped the vCPUs for a cut, for its pause
	fencedAt  time.Time // when the network fence went up
}

// runtimeState is persisted next to the spec so a restarted hostd knows
// which process to adopt and which devices are detached.
type runtimeState struct {
	PID       int       `json:"pid,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Detached lists passthrough devices currently unplugged.
	Detached []string `json:"detached,omitempty"`
	// Slots maps a passthrough device to the pool entry it uses here.
	Slots map[string]poolSlot `json:"slots,omitempty"`
	// Incoming is set while QEMU waits for a migration stream.
	Incoming bool `json:"incoming,omitempty"`
	// Round is the guest cooperation round a migration carries.
	Round *Round `json:"round,omitempty"`
	// From is the certificate name of the peer hostd this VM was migrated
	// from; only that peer may finish, abort or read the migration.
	From string `json:"from,omitempty"`
	// QEMU is the binary this VM runs with when not the host's default
	// (after an upgrade by rejuvenate).
	QEMU string `json:"qemu,omitempty"`
	// Gen numbers the QEMU processes of this VM; it names the monitor and
	// guest sockets, so a warm restart can run two side by side.
	Gen int `json:"gen,omitempty"`
	// Lease is a coordinator's hold on the VM; persisted so that a
	// restarted hostd still undoes an abandoned operation.
	Lease *lease `json:"lease,omitempty"`
	// ClosedOps are the operations whose closing steps ran for the VM
	// (the latest maxClosedOps): their forward steps are refused.
	ClosedOps []string `json:"closed_ops,omitempty"`
	// Answers are the results of the VM's latest steps (maxAnswers), so a
	// step re-sent after a restart gets its first answer.
	Answers []stepAnswer `json:"answers,omitempty"`
	// Stream is the job's live checkpoint stream being written (from its
	// point step to the stream's end), or one lost with a hostd.
	Stream *liveStream `json:"stream,omitempty"`
	// RAM is the shared RAM file hostd created for this VM: the only one
	// it hands to a QEMU of the VM again (ramfile.go).
	RAM *ramIdentity `json:"ram,omitempty"`
}

type poolSlot struct {
	Pool  string `json:"pool"`
	Index int    `json:"index"`
}

// VMInfo is a VM's status as the API reports it.
type VMInfo struct {
	Name      string    `json:"name"`
	State     string    `json:"state"`
	Operation string    `json:"operation,omitempty"`
	PID       int       `json:"pid,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	Detached  []string  `json:"detached,omitempty"`
	// Present lists the passthrough devices QEMU has on its PCI buses now
	// (query-pci), the ground truth next to Detached's bookkeeping.
	Present []string          `json:"present,omitempty"`
	Devices map[string]string `json:"devices,omitempty"`
	Spec    Spec              `json:"spec"`
	Dir     string            `json:"dir"`
	// RAMError says how the file at the VM's RAM path is not the one
	// hostd created for it (replaced): it is never used again.
	RAMError string `json:"ram_error,omitempty"`
}

// New opens (creating if needed) the state dir and re-adopts every VM whose
// QEMU is still running.
func New(cfg Config) (*Host, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	h := &Host{cfg: cfg, log: cfg.Logger, vms: map[string]*VM{}, metrics: newMetrics(),
		started: time.Now().UTC(), steps: newStepState()}
	if err := os.MkdirAll(h.vmsDir(), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	// Made now, before any local user can take the name; one that is
	// already someone else's fails every start on shared memory.
	for _, dir := range h.layout().RAMDirs() {
		if d, err := openRAMDir(dir); err != nil {
			h.log.Error("guest RAM directory refused: VMs on shared memory cannot start", "err", err)
		} else {
			d.Close()
		}
	}
	var err error
	if h.keys, err = loadManifestKeys(cfg); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(h.vmsDir())
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		vm, err := h.load(e.Name())
		if err != nil {
			h.log.Warn("skipping unreadable vm state", "vm", e.Name(), "err", err)
			continue
		}
		h.vms[vm.name] = vm
		if err := vm.adopt(); err != nil {
			vm.log.Warn("could not re-adopt", "err", err)
		}
		h.loadSteps(vm)
	}
	h.metrics.vmsFunc(h.stateCounts)
	for _, f := range h.StaleSharedMemory() {
		h.log.Warn("stale shared memory file: no running vm owns it", "file", f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go h.leaseLoop(ctx)
	h.recoverDirect()
	return h, nil
}

// Close drops monitor connections; VMs keep running.
func (h *Host) Close() error {
	if h.stop != nil {
		h.stop()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, vm := range h.vms {
		vm.mu.Lock()
		if vm.mon != nil {
			vm.mon.Close()
		}
		vm.mu.Unlock()
	}
	return nil
}

// Config returns the effective configuration.
func (h *Host) Config() Config { return h.cfg }

func (h *Host) vmsDir() string { return h.layout().VMs() }

func (h *Host) newVM(name string, spec Spec) *VM {
	return &VM{h: h, name: name, dir: h.layout().VM(name), spec: spec,
		log: h.log.With("vm", name)}
}

func (h *Host) load(name string) (*VM, error) {
	vm := h.newVM(name, Spec{})
	if err := readJSON(filepath.Join(vm.dir, fileSpec), &vm.spec); err != nil {
		return nil, err
	}
	if err := readJSON(filepath.Join(vm.dir, fileRuntime), &vm.rt); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return vm, nil
}

// Get returns a VM by name.
func (h *Host) Get(name string) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	vm, ok := h.vms[name]
	if !ok {
		return nil, fmt.Errorf("vm %q: %w", name, ErrNotFound)
	}
	return vm, nil
}

// List returns every VM's status, sorted by name.
func (h *Host) List() []VMInfo {
	h.mu.Lock()
	vms := make([]*VM, 0, len(h.vms))
	for _, vm := range h.vms {
		vms = append(vms, vm)
	}
	h.mu.Unlock()
	out := make([]VMInfo, 0, len(vms))
	for _, vm := range vms {
		out = append(out, vm.Info(context.Background()))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (h *Host) stateCounts() map[string]int {
	counts := map[string]int{}
	for _, info := range h.List() {
		counts[info.State]++
	}
	return counts
}

// Create registers a VM (and persists its spec); it does not start it.
// The spec must pass the host's policy (an incoming migration's too).
func (h *Host) Create(spec Spec) (*VM, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	// The name becomes vms/<name>: it must stay a directory of vms/.
	if _, err := names.Join(h.vmsDir(), spec.Name); err != nil {
		return nil, fmt.Errorf("field name: %w: %v", ErrInvalidSpec, err)
	}
	if err := h.cfg.Policy.Check(spec, h.cfg.Pools); err != nil {
		return nil, err
	}
	return h.create(spec)
}

// create registers a VM whose spec was checked.
func (h *Host) create(spec Spec) (*VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.vms[spec.Name]; ok {
		return nil, fmt.Errorf("vm %q: %w", spec.Name, ErrExists)
	}
	if spec.HugePages && hugetlbfsDir() == "" {
		return nil, fmt.Errorf("vm %q: field hugepages: no hugetlbfs is mounted here (mount -t hugetlbfs none /dev/hugepages): %w", spec.Name, ErrInvalidSpec)
	}
	if spec.SharedMemory == nil {
		on := spec.HugePages || h.shmHasRoom(spec.Memory)
		spec.SharedMemory = &on
	}
	vm := h.newVM(spec.Name, spec)
	if err := mkdirAll(vm.dir, 0o700); err != nil {
		return nil, err
	}
	if err := writeJSON(filepath.Join(vm.dir, fileSpec), spec); err != nil {
		os.RemoveAll(vm.dir)
		return nil, err
	}
	h.vms[spec.Name] = vm
	vm.log.Info("created")
	return vm, nil
}

// Delete removes a stopped VM and its state.
func (h *Host) Delete(name string) error {
	vm, err := h.Get(name)
	if err != nil {
		return err
	}
	if !vm.op.TryLock() {
		return fmt.Errorf("vm %q: %w", name, ErrBusy)
	}
	defer vm.op.Unlock()
	if vm.alive() {
		return fmt.Errorf("vm %q is running: stop it first: %w", name, ErrInvalidState)
	}
	h.forget(vm)
	vm.log.Info("deleted")
	return nil
}

// forget drops a VM that is not running from the host and the disk.
func (h *Host) forget(vm *VM) { h.forgetKeep(vm, false) }

// forgetKeep is forget that may keep the console and QEMU logs, for a VM
// that is replaced by a restore of itself: its console history goes on.
func (h *Host) forgetKeep(vm *VM, keepLogs bool) {
	h.mu.Lock()
	if h.vms[vm.name] == vm {
		delete(h.vms, vm.name)
	}
	h.mu.Unlock()
	vm.removeRAM()
	if !keepLogs {
		os.RemoveAll(vm.dir)
		return
	}
	entries, _ := os.ReadDir(vm.dir)
	for _, e := range entries {
		if e.Name() != fileSerial && e.Name() != fileQEMULog {
			os.RemoveAll(filepath.Join(vm.dir, e.Name()))
		}
	}
}

// lock takes a VM's operation lock or reports ErrBusy.
func (vm *VM) lock(op string) error {
	if !vm.op.TryLock() {
		vm.mu.Lock()
		cur := vm.operation
		vm.mu.Unlock()
		return fmt.Errorf("vm %q is busy with %s: %w", vm.name, cur, ErrBusy)
	}
	vm.mu.Lock()
	vm.operation = op
	vm.mu.Unlock()
	return nil
}

func (vm *VM) unlock() {
	vm.mu.Lock()
	vm.operation = ""
	vm.mu.Unlock()
	vm.op.Unlock()
}

// Name returns the VM's name.
func (vm *VM) Name() string { return vm.name }

// Spec returns a copy of the VM's spec.
func (vm *VM) Spec() Spec {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.spec
}

func (vm *VM) monitor() (*qmp.Client, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.mon == nil {
		return nil, fmt.Errorf("vm %q is not running: %w", vm.name, ErrInvalidState)
	}
	select {
	case <-vm.mon.Done():
		return nil, fmt.Errorf("vm %q: monitor closed: %w", vm.name, ErrInvalidState)
	default:
	}
	return vm.mon, nil
}

func (vm *VM) alive() bool {
	vm.mu.Lock()
	pid := vm.rt.PID
	vm.mu.Unlock()
	return pid > 0 && processAlive(pid)
}

// Info reports the VM's status; the run state comes from QEMU itself.
func (vm *VM) Info(ctx context.Context) VMInfo {
	vm.mu.Lock()
	info := VMInfo{Name: vm.name, Operation: vm.operation, PID: vm.rt.PID, StartedAt: vm.rt.StartedAt,
		Detached: slices.Clone(vm.rt.Detached), Spec: vm.spec, Dir: vm.dir}
	mon := vm.mon
	incoming := vm.rt.Incoming
	if len(vm.rt.Slots) > 0 {
		info.Devices = map[string]string{}
		for id, s := range vm.rt.Slots {
			info.Devices[id] = fmt.Sprintf("%s[%d]", s.Pool, s.Index)
		}
	}
	vm.mu.Unlock()
	info.RAMError = vm.ramReplaced()
	switch {
	case info.PID == 0 || !processAlive(info.PID):
		info.State, info.PID = "stopped", 0
	case mon == nil:
		info.State = "unmanaged"
	default:
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := mon.Status(ctx)
		switch {
		case err != nil:
			info.State = "unknown"
		case incoming && st.Status == "inmigrate":
			info.State = "incoming"
		default:
			info.State = st.Status
		}
		if err == nil && !incoming {
			for _, id := range info.Spec.PassthroughIDs() {
				if ok, perr := pciPresent(ctx, mon, id); perr == nil && ok {
					info.Present = append(info.Present, id)
				}
			}
		}
	}
	return info
}

// saveRuntime persists rt; callers hold vm.mu.
func (vm *VM) saveRuntime() {
	if err := writeJSON(filepath.Join(vm.dir, fileRuntime), vm.rt); err != nil {
		vm.log.Error("persist runtime state", "err", err)
	}
}

// adopt reconnects to a QEMU left running by an earlier hostd.
func (vm *VM) adopt() error {
	vm.loseStream()
	vm.mu.Lock()
	pid := vm.rt.PID
	vm.mu.Unlock()
	if pid == 0 {
		return nil
	}
	if !processAlive(pid) || !vm.ownsProcess(pid) {
		vm.mu.Lock()
		vm.rt.PID, vm.rt.Incoming = 0, false
		vm.saveRuntime()
		vm.mu.Unlock()
		vm.log.Info("qemu is gone; vm is stopped", "pid", pid)
		return nil
	}
	if err := vm.verifyAdoptRAM(pid); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vm.mu.Lock()
	gen := vm.rt.Gen
	vm.mu.Unlock()
	mon, err := qmp.Dial(ctx, "unix", filepath.Join(vm.dir, genName(fileQMP, gen)))
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	exited := make(chan struct{})
	vm.mu.Lock()
	vm.mon, vm.exited = mon, exited
	vm.mu.Unlock()
	go vm.watch(mon, nil, pid, exited)
	vm.log.Info("re-adopted running qemu", "pid", pid)
	vm.settleLive(mon)
	return nil
}

// settleLive clears what a hostd that died during a live checkpoint left
// in QEMU: a background snapshot still streams (into a file the
// coordinator deletes: it never got a manifest) and must finish on its
// own, since QEMU 7.2 cannot end one early without hanging the guest; once
// it has, the capability goes off so a later migration is a migration. (A
// running VM's copy went through a pipe into the dead hostd: it fails at
// its next write and QEMU runs the VM on.)
func (vm *VM) settleLive(mon *qmp.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	mi, err := mon.QueryMigrate(ctx)
	cancel()
	var orphan *liveSave
	if err == nil && mi.Status != "" && mi.Status != "completed" && mi.Status != "failed" && mi.Status != "cancelled" {
		vm.log.Warn("a stream from before hostd restarted is still running; letting it finish", "status", mi.Status)
		// Stands for the stream in attachAll (QEMU refuses device_add
		// meanwhile) and fails a save-wait: it has no manifest.
		orphan = &liveSave{done: make(chan struct{}), err: ErrStreamLost}
		vm.mu.Lock()
		vm.live = orphan
		vm.mu.Unlock()
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		if orphan != nil {
			mon.WaitMigration(ctx, time.Second, nil)
			close(orphan.done)
			vm.mu.Lock()
			if vm.live == orphan {
				vm.live = nil
			}
			vm.mu.Unlock()
		}
		mon.CloseFD(ctx, snapshot.FD)
		if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": false}); err != nil {
			vm.log.Debug("background-snapshot off", "err", err)
		}
	}()
}

// ownsProcess guards against PID reuse: the process must be QEMU with this
// VM's monitor socket on its command line.
func (vm *VM) ownsProcess(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	vm.mu.Lock()
	gen := vm.rt.Gen
	vm.mu.Unlock()
	return strings.Contains(string(cmdline), filepath.Join(vm.dir, genName(fileQMP, gen)))
}

// watch notices QEMU going away. A started QEMU is reaped by wait; an
// adopted one is not our child, so it is polled.
func (vm *VM) watch(mon *qmp.Client, wait func() error, pid int, exited chan struct{}) {
	if wait != nil {
		err := wait()
		vm.log.Info("qemu exited", "pid", pid, "status", err)
	} else {
		<-mon.Done()
		for processAlive(pid) {
			time.Sleep(100 * time.Millisecond)
		}
		vm.log.Info("qemu exited", "pid", pid)
	}
	vm.mu.Lock()
	if vm.rt.PID == pid {
		vm.rt.PID, vm.rt.Incoming = 0, false
		vm.saveRuntime()
	}
	if vm.mon == mon {
		vm.mon = nil
	}
	vm.mu.Unlock()
	mon.Close()
	close(exited)
}

// Start boots a stopped VM.
func (vm *VM) Start(ctx context.Context) error {
	if err := vm.lock("start"); err != nil {
		return err
	}
	defer vm.unlock()
	if vm.alive() {
		return fmt.Errorf("vm %q is already running: %w", vm.name, ErrInvalidState)
	}
	if err := vm.allocateSlots(nil); err != nil {
		return err
	}
	if err := vm.launch(ctx, launch{}); err != nil {
		return err
	}
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	return mon.Cont(ctx)
}

// proc is a started QEMU process with its monitor, not yet (or no longer)
// the VM's current one.
type proc struct {
	pid     int
	gen     int
	bin     string
	mon     *qmp.Client
	waited  chan struct{}
	waitErr chan error
}

// kill ends a proc that never became the VM's QEMU.
func (p *proc) kill() {
	syscall.Kill(p.pid, syscall.SIGKILL)
	<-p.waited
	p.mon.Close()
}

// launch starts QEMU and makes it the VM's current one.
func (vm *VM) launch(ctx context.Context, l launch) error {
	vm.mu.Lock()
	bin, gen := vm.qemuBinary(), vm.rt.Gen
	vm.mu.Unlock()
	p, err := vm.start(ctx, l, bin, gen)
	if err != nil {
		return err
	}
	vm.install(p, l)
	return nil
}

// start starts a QEMU for the VM, paused (-S, so a failed start never runs
// the guest), and connects its monitor. gen picks the socket names, so a
// second QEMU can start while the current one still runs (warm restart).
func (vm *VM) start(ctx context.Context, l launch, bin string, gen int) (_ *proc, err error) {
	vm.mu.Lock()
	l.spec, l.dir, l.accel, l.gen = vm.spec, vm.dir, vm.h.cfg.Accel, gen
	l.override = vm.overrides()
	vm.mu.Unlock()
	ram, err := vm.qemuRAM(&l)
	if err != nil {
		return nil, err
	}
	defer func() { ram.release(err != nil) }()
	l.runAs = vm.h.cfg.QEMUUser
	args, err := qemuArgs(l)
	if err != nil {
		return nil, err
	}
	args = append(args, "-S")
	for _, f := range []string{fileQMP, fileGuest, filePID} {
		os.Remove(filepath.Join(vm.dir, genName(f, gen)))
	}
	logPath := filepath.Join(vm.dir, fileQEMULog)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = ram.files()
	// A process group of its own: signals to hostd's (Ctrl-C, a service
	// manager stopping hostd) must not reach the VMs. Not a session: on a
	// host whose processes sit in the root cgroup, each session is a
	// scheduling group of its own (autogroup), which would make every VM
	// an equal share of the CPUs whatever the nice values hostd gives its
	// threads (a stream's nice 19 then yielded only to its own vCPUs, not
	// to the other VMs'; traced with four VMs on two cores).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm %q: %w: %v", vm.name, ErrQEMUStart, err)
	}
	p := &proc{pid: cmd.Process.Pid, gen: gen, bin: bin, waited: make(chan struct{}), waitErr: make(chan error, 1)}
	go func() { p.waitErr <- cmd.Wait(); close(p.waited) }()
	fail := func(reason string) error {
		cmd.Process.Kill()
		<-p.waited
		return fmt.Errorf("vm %q: %w: %s: %s", vm.name, ErrQEMUStart, reason, tailFrom(logPath, logStart, 2048))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.waited:
			return nil, fmt.Errorf("vm %q: %w: qemu exited: %s", vm.name, ErrQEMUStart, tailFrom(logPath, logStart, 2048))
		case <-ctx.Done():
			return nil, fail(ctx.Err().Error())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fail("no QMP monitor after 30s")
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		p.mon, err = qmp.Dial(dctx, "unix", filepath.Join(vm.dir, genName(fileQMP, gen)))
		cancel()
		if err == nil {
			return p, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// install makes p the VM's current QEMU.
func (vm *VM) install(p *proc, l launch) {
	exited := make(chan struct{})
	vm.mu.Lock()
	vm.mon, vm.exited = p.mon, exited
	vm.rt.PID, vm.rt.StartedAt, vm.rt.Incoming, vm.rt.Gen = p.pid, time.Now().UTC(), l.incoming, p.gen
	if p.bin != vm.h.cfg.QEMU {
		vm.rt.QEMU = p.bin
	} else {
		vm.rt.QEMU = ""
	}
	vm.rt.Detached = nil
	for id := range l.absent {
		vm.rt.Detached = append(vm.rt.Detached, id)
	}
	sort.Strings(vm.rt.Detached)
	vm.saveRuntime()
	vm.mu.Unlock()
	go vm.watch(p.mon, func() error { <-p.waited; return <-p.waitErr }, p.pid, exited)
	vm.log.Info("qemu started", "pid", p.pid, "incoming", l.incoming, "qemu", p.bin, "gen", p.gen)
}

// genName is a per-generation file name: qmp.sock, qmp.1.sock, ...
func genName(base string, gen int) string {
	if gen == 0 {
		return base
	}
	ext := filepath.Ext(base)
	return strings.TrimSuffix(base, ext) + "." + strconv.Itoa(gen) + ext
}

// Stop shuts the VM down: ACPI power-down first, then quit, then SIGKILL.
func (vm *VM) Stop(ctx context.Context, timeout time.Duration) error {
	if err := vm.lock("stop"); err != nil {
		return err
	}
	defer vm.unlock()
	return vm.stop(ctx, timeout)
}

func (vm *VM) stop(ctx context.Context, timeout time.Duration) error {
	vm.mu.Lock()
	mon, exited, pid := vm.mon, vm.exited, vm.rt.PID
	vm.mu.Unlock()
	if pid == 0 || !processAlive(pid) {
		return nil
	}
	if timeout == 0 {
		timeout = vm.h.cfg.StopTimeout
	}
	if mon != nil {
		if err := mon.SystemPowerdown(ctx); err == nil {
			select {
			case <-exited:
				vm.cleanupAfterStop()
				return nil
			case <-time.After(timeout):
				vm.log.Info("guest did not power off in time; quitting qemu", "timeout", timeout)
			case <-ctx.Done():
			}
		}
		qctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		mon.Quit(qctx)
		cancel()
		select {
		case <-exited:
			vm.cleanupAfterStop()
			return nil
		case <-time.After(5 * time.Second):
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if exited != nil {
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			return fmt.Errorf("vm %q: qemu pid %d did not exit after SIGKILL", vm.name, pid)
		}
	}
	vm.cleanupAfterStop()
	return nil
}

// kill ends QEMU at once (a destination that must not run, a failed start).
func (vm *VM) kill() {
	vm.killProcess()
	vm.cleanupAfterStop()
}

// killProcess ends QEMU at once but leaves its shared RAM file alone.
func (vm *VM) killProcess() {
	vm.mu.Lock()
	exited, pid := vm.exited, vm.rt.PID
	vm.mu.Unlock()
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if exited != nil {
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
	}
	vm.mu.Lock()
	vm.rt.PID, vm.rt.Incoming = 0, false
	vm.saveRuntime()
	vm.mu.Unlock()
}

// cleanupAfterStop removes what must not outlive the VM's QEMU: shared RAM
// is only removed once QEMU is gone, never while it runs.
func (vm *VM) cleanupAfterStop() {
	vm.mu.Lock()
	vm.rt.PID, vm.rt.Incoming, vm.rt.Detached = 0, false, nil
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.removeRAM()
}

// Pause stops the vCPUs.
func (vm *VM) Pause(ctx context.Context) error {
	if err := vm.lock("pause"); err != nil {
		return err
	}
	defer vm.unlock()
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	return mon.Stop(ctx)
}

// Resume continues the vCPUs.
func (vm *VM) Resume(ctx context.Context) error {
	if err := vm.lock("resume"); err != nil {
		return err
	}
	defer vm.unlock()
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	return mon.Cont(ctx)
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A zombie answers kill(0) but is gone for our purposes.
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z' && stat[i+2] != 'X'
	}
	return true
}

// tailFrom returns at most n bytes of a log written since offset.
func tailFrom(path string, offset int64, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	start := offset
	if st.Size()-start > n {
		start = st.Size() - n
	}
	buf := make([]byte, st.Size()-start)
	f.ReadAt(buf, start)
	return strings.TrimSpace(string(buf))
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// writeJSON replaces a file atomically and durably (atomicfile: no
// temporary file is left behind when it fails).
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, append(data, '\n'), 0o600)
}

// mkdirAll and mkdir create directories durably (each created one's parent
// fsynced); variables so a test sees checkpoint directories made this way.
var (
	mkdirAll, defaultMkdirAll = atomicfile.MkdirAll, atomicfile.MkdirAll
	mkdir, defaultMkdir       = atomicfile.Mkdir, atomicfile.Mkdir
)

// shmHasRoom reports whether /dev/shm can hold another guest of this size
// with room to spare (the default for shared memory).
func (h *Host) shmHasRoom(mem Size) bool { return shmFreeBytes() > 2*int64(mem)<<20+256<<20 }

// shmFree reports whether /dev/shm can hold a guest of this size at all.
func (h *Host) shmFree(mem Size) bool { return shmFreeBytes() >= int64(mem)<<20 }

func shmFreeBytes() int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(shmDir, &st); err != nil {
		return 0
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// peer returns a client for another hostd, over mutual TLS when set.
func (h *Host) peer(addr string) *Client {
	if h.PeerTLS != nil {
		return NewClientTLS(addr, h.PeerTLS)
	}
	return NewClient(addr)
}

package hostd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/symvirt/symvirt/hostd/devices"
	"github.com/symvirt/symvirt/hostd/qemu"
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
	// ramPool keeps departed VMs' RAM files zeroed for new ones (nil: off).
	ramPool *ramPool
	// populating counts the RAM files being populated in the background.
	populating atomic.Int64

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
	usage *usageState
	stop  context.CancelFunc
	pools clonePools // templates' standby clones (template_pool.go)
	// keys sign the checkpoint manifests this host writes and verify
	// the ones it restores (sign.go).
	keys *manifestKeys
	// epoch fences off deposed coordinator leaders (epoch.go).
	epoch epochFence
	// images are the base images this host seeds or caches (image.go).
	images imageSet
	// fetches are the template fetches under way (template_fetch_once.go).
	fetches templateFetches
	// launched are the destinations started by Launch steps, kept for
	// their Migrate (migrate_launch.go).
	launched launches
}

// VM is one VM known to this host.
type VM struct {
	h    *Host
	name string
	dir  string
	log  *slog.Logger

	// op serialises long operations on one VM; TryLock failure is ErrBusy.
	op opLock

	mu        sync.Mutex
	spec      Spec
	rt        runtimeState
	savedRT   []byte             // rt as last written: saveRuntime skips an unchanged state
	proc      *qemu.Process      // the current QEMU (nil: none, or not adopted)
	ramOrphan bool               // the current QEMU went away (process.go's watch)
	sparseRAM bool               // a template's boot: its RAM file is published as it is (ramfill.go)
	zeroRAM   bool               // the current QEMU waits for its state on a RAM file of zeros (launch.zeroRAM)
	operation string             // what the VM is doing now, for status
	live      *liveSave          // a live checkpoint still streaming
	armed     *snapshot.Armed    // a live checkpoint made ready before the job's cut
	fwdOp     string             // the operation whose forward step runs now
	fwdCancel context.CancelFunc // cancels it (lockStep: its closing step is waiting)
	attachMu  sync.Mutex
	stoppedAt time.Time     // when hostd stopped the vCPUs for a cut, for its pause
	fencedAt  time.Time     // when the network fence went up
	hold      *peerHold     // the job-scoped fence (peerhold.go)
	disks     diskWork      // a checkpoint's disk copy and flatten (diskcut.go)
	frames    *frameForward // a migrated source passing on what its taps still get
	reboot    cloneReboot   // a clone's guest rebooting (template_reboot.go)
}

// runtimeState is persisted next to the spec so a restarted hostd knows
// which process to adopt and which devices are detached.
type runtimeState struct {
	PID       int       `json:"pid,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Detached lists passthrough devices currently unplugged.
	Detached []string `json:"detached,omitempty"`
	// Slots maps a passthrough device to the pool entry it uses here.
	Slots map[string]devices.Slot `json:"slots,omitempty"`
	// Incoming is set while QEMU waits for a migration stream.
	Incoming bool `json:"incoming,omitempty"`
	// BornIn is the directory the current QEMU was started in, when not
	// the VM's (a template's standby clone): its command line names it.
	BornIn string `json:"born_in,omitempty"`
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
	// Hold is the operation whose job-scoped network fence is up on the
	// VM (peerhold.go): after a hostd restart its point is refused.
	Hold string `json:"hold,omitempty"`
	// RAM is the shared RAM file hostd created for this VM: the only one
	// it hands to a QEMU of the VM again (ramfile.go).
	RAM *qemu.RAMFile `json:"ram,omitempty"`
	// Chain is the VM's disk chain since its first disk cut (diskcut.go).
	Chain *chainState `json:"chain,omitempty"`
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
	// Usage is what the VM used over the host's usage window (usage.go).
	Usage *VMUsage `json:"usage,omitempty"`
}

// New opens (creating if needed) the state dir and re-adopts every VM whose
// QEMU is still running.
func New(cfg Config) (*Host, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	snapshot.PointRealtime = *cfg.LivePointRealtime
	h := &Host{cfg: cfg, log: cfg.Logger, vms: map[string]*VM{}, metrics: newMetrics(),
		started: time.Now().UTC(), steps: newStepState(), usage: &usageState{vms: map[string]*vmSamples{}}}
	if err := h.checkQEMU(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(h.vmsDir(), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	// Made now, before any local user can take the name; one that is
	// already someone else's fails every start on shared memory.
	for _, dir := range h.layout().RAMDirs() {
		if d, err := qemu.OpenRAMDir(dir); err != nil {
			h.log.Error("guest RAM directory refused: VMs on shared memory cannot start", "err", err)
		} else {
			d.Close()
		}
	}
	if huge, err := qemu.ShmHuge(cfg.ShmDir); err == nil {
		h.log.Info("guest RAM files on a tmpfs", "shm_dir", cfg.ShmDir, "huge", huge)
	}
	h.ramPool = newRAMPool(h.log, h.layout().ShmRAMDir(), cfg.ramPoolBytes, cfg.ramPoolReserve)
	h.metrics.ramPoolFunc(h.ramPool.bytes, h.ramPool.takenCount)
	var err error
	if h.keys, err = loadManifestKeys(cfg); err != nil {
		return nil, err
	}
	h.reopenImages() // before the VMs reading them are adopted
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
	h.reclaimOrphanRAM()
	h.reapStandbys()
	h.metrics.vmsFunc(h.stateCounts)
	for _, f := range h.StaleSharedMemory() {
		h.log.Warn("stale shared memory file: no running vm owns it", "file", f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	if err := h.serveMetrics(ctx); err != nil {
		cancel()
		return nil, err
	}
	go h.leaseLoop(ctx)
	go h.usageLoop(ctx)
	h.recoverDirect()
	return h, nil
}

// Close drops monitor connections; VMs keep running.
func (h *Host) Close() error {
	if h.stop != nil {
		h.stop()
	}
	h.closePools()
	h.ramPool.close()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, vm := range h.vms {
		vm.mu.Lock()
		if vm.proc != nil {
			vm.proc.Mon.Close()
		}
		vm.mu.Unlock()
	}
	for _, dir := range h.layout().RAMDirs() {
		os.Remove(dir) // only if empty: no VM's file is left there
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
	if spec.HugePages && qemu.HugetlbfsDir() == "" {
		return nil, fmt.Errorf("vm %q: field hugepages: no hugetlbfs is mounted here (mount -t hugetlbfs none /dev/hugepages): %w", spec.Name, ErrInvalidSpec)
	}
	if spec.SharedMemory == nil {
		// Room to spare: the default must not fill the tmpfs.
		on := spec.HugePages || qemu.FreeBytes(h.cfg.ShmDir)+h.ramPool.bytes() > 2*int64(spec.Memory)<<20+256<<20
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
	vm.reclaimRAM()
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

// Info reports the VM's status; the run state comes from QEMU itself.
func (vm *VM) Info(ctx context.Context) VMInfo {
	vm.mu.Lock()
	info := VMInfo{Name: vm.name, Operation: vm.operation, PID: vm.rt.PID, StartedAt: vm.rt.StartedAt,
		Detached: slices.Clone(vm.rt.Detached), Spec: vm.spec, Dir: vm.dir}
	var mon *qmp.Client
	if vm.proc != nil {
		mon = vm.proc.Mon
	}
	incoming := vm.rt.Incoming
	if len(vm.rt.Slots) > 0 {
		info.Devices = map[string]string{}
		for id, s := range vm.rt.Slots {
			info.Devices[id] = fmt.Sprintf("%s[%d]", s.Pool, s.Index)
		}
	}
	info.RAMError = vm.rt.RAM.Replaced()
	vm.mu.Unlock()
	info.Usage = vm.h.vmUsage(vm.name, info.Spec.Memory)
	switch {
	case !qemu.Alive(info.PID):
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
				if ok, perr := devices.Present(ctx, mon, id); perr == nil && ok {
					info.Present = append(info.Present, id)
				}
			}
		}
	}
	return info
}

// saveRuntime persists rt; callers hold vm.mu.
func (vm *VM) saveRuntime() {
	data, err := json.MarshalIndent(vm.rt, "", "  ")
	if err == nil && bytes.Equal(data, vm.savedRT) {
		return // each write costs two fsyncs; many callers change nothing
	}
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(vm.dir, fileRuntime), append(data, '\n'), 0o600)
	}
	if err != nil {
		vm.log.Error("persist runtime state", "err", err)
		return
	}
	vm.savedRT = data
}

// settleLive clears what a hostd that died during a live checkpoint left
// in QEMU: a background snapshot still streams (into a file the
// coordinator deletes: it never got a manifest) and must finish on its
// own, since QEMU 7.2 cannot end one early without hanging the guest; once
// it has, the capability goes off so a later migration is a migration. (A
// running VM's copy went through a socket into the dead hostd: it fails at
// its next write and QEMU runs the VM on; the switchover hold goes off.)
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
		// Apart: QEMU before 8.1 has no switchover-ack and refuses it.
		mon.MigrateSetCapabilities(ctx, map[string]bool{"switchover-ack": false, "return-path": false})
	}()
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

// peer returns a client for another hostd, over mutual TLS when set.
func (h *Host) peer(addr string) *Client {
	if h.PeerTLS != nil {
		return NewClientTLS(addr, h.PeerTLS)
	}
	return NewClient(addr)
}

package hostd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	oprun "github.com/symvirt/symvirt/coord/run"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"github.com/symvirt/symvirt/internal/jsonapi"
	"github.com/symvirt/symvirt/qmp"
)

// A direct operation (vm checkpoint, restore, migrate) is a one-VM
// operation of the coordinator's state machine, run by this hostd: the
// machine decides every step and every undo, run.Drive executes them
// through hostd's own steps (and a destination hostd's peer endpoints),
// and each step is journaled in STATE_DIR/ops first, so a restarted hostd
// finishes or rolls back what its predecessor left.

// localHost is this hostd's name in its direct operations; a migration's
// destination is named by its API address.
const localHost = "local"

// crashAt (tests only) names a point where hostd exits at once, as a kill
// -9 would: "KIND:STEP" right after this host executed the operation's
// step, before the machine heard of it, or "finish-incoming" right after a
// destination resumed a migrated VM.
var crashAt = os.Getenv("SYMVIRT_HOSTD_CRASH_AT")

func crashPoint(at string, log interface{ Warn(string, ...any) }) {
	if crashAt != "" && crashAt == at {
		log.Warn("crash point reached: exiting without cleanup", "at", at)
		os.Exit(99)
	}
}

// directOp is a direct operation as journaled: the machine's Op and the
// arguments its steps need, so that a restarted hostd can execute them.
type directOp struct {
	Op      *machine.Op `json:"op"`
	Dir     string      `json:"dir,omitempty"` // checkpoint or restore directory
	To      string      `json:"to,omitempty"`  // migrate: the destination hostd's address
	Grant   *Grant      `json:"grant,omitempty"`
	NoGuest bool        `json:"no_guest,omitempty"`
	// Quit (checkpoint): the VM quits after its save instead of running on.
	Quit          bool            `json:"quit,omitempty"`
	MaxBandwidth  int64           `json:"max_bandwidth,omitempty"` // migrate, live checkpoint
	DowntimeLimit time.Duration   `json:"downtime_limit_ns,omitempty"`
	Capabilities  map[string]bool `json:"capabilities,omitempty"`
	QEMU          string          `json:"qemu,omitempty"` // rejuvenate: the new binary

	progress   ProgressFunc
	journal    *os.File   // open for appending after the first record
	steps      sync.Mutex // this host runs one of the op's steps at a time
	mu         sync.Mutex
	failure    error // the first forward step's failure, with its sentinel
	saved      bool
	stopped    time.Time
	pause      time.Duration // live checkpoint: the snapshot point's
	snapshotAt time.Time
	resumed    time.Time
	mig        qmp.MigrationInfo
	bytes      int64  // rejuvenate: device state moved
	note       string // how a step departed from its request
	destVM     VMInfo
}

// directBusy holds the VMs under a direct operation: one at a time.
var directBusy sync.Map // directKey -> op id

type directKey struct {
	h  *Host
	vm string
}

// opOptions are the deadlines of a direct operation.
func (h *Host) opOptions(checkpointID string) machine.Options {
	o := machine.Options{PrepareTimeout: h.cfg.GuestTimeout + 30*time.Second, StepTimeout: h.cfg.OpStepTimeout,
		TransferTimeout: h.cfg.OpTransferTimeout, CheckpointID: checkpointID}
	if o.StepTimeout <= 0 {
		o.StepTimeout = 2 * time.Minute
	}
	if o.TransferTimeout <= 0 {
		o.TransferTimeout = 30 * time.Minute
	}
	return o
}

// newDirect builds a one-VM operation; vm.Host is this host.
func (h *Host) newDirect(kind machine.Kind, vm machine.VM, opts machine.Options) (*directOp, []machine.Action, error) {
	var b [6]byte
	rand.Read(b[:])
	vm.Host = localHost
	op, acts, err := machine.New(string(kind)+"-"+hex.EncodeToString(b[:]), kind, vm.Name, []machine.VM{vm}, opts, time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("vm %q: %w: %v", vm.Name, ErrInvalidSpec, err)
	}
	return &directOp{Op: op}, acts, nil
}

// runDirect drives d to its end (the VM is claimed for it) and returns the
// error a caller sees: nil only if the operation committed and its VM
// ended where the operation meant it to.
func (h *Host) runDirect(d *directOp, acts []machine.Action) (machine.Result, error) {
	key := directKey{h, d.Op.Job}
	if cur, busy := directBusy.LoadOrStore(key, d.Op.ID); busy {
		return d.Op.Result(), fmt.Errorf("vm %q is busy with operation %v: %w", d.Op.Job, cur, ErrBusy)
	}
	defer directBusy.Delete(key)
	return h.drive(d, acts)
}

// drivenHere reports whether op is the direct operation this hostd is
// driving on vm. Its journal is its memory of its steps: their answers and
// its closing need no copy in the VM's runtime state (a restarted hostd
// answers the steps it was running from the journal, not from there).
func (h *Host) drivenHere(vm, op string) bool {
	cur, ok := directBusy.Load(directKey{h, vm})
	return ok && cur == op
}

func (h *Host) drive(d *directOp, acts []machine.Action) (machine.Result, error) {
	if d.progress == nil {
		d.progress = func(Progress) {}
	}
	log := h.log.With("op", d.Op.ID, "vm", d.Op.Job)
	hooks := oprun.Hooks{Journal: func(*machine.Op) error { return h.journalDirect(d) }, Log: log}
	ex := oprun.ExecutorFunc(func(ctx context.Context, a machine.Action) machine.Event { return h.execDirect(ctx, d, a) })
	res, err := oprun.Drive(context.Background(), d.Op, acts, ex, hooks)
	if d.journal != nil {
		d.journal.Close()
	}
	if err != nil {
		return res, err
	}
	if err := os.Remove(h.directPath(d.Op.ID)); err != nil {
		log.Warn("operation journal not removed", "err", err)
	}
	log.Info("direct operation done", "kind", res.Kind, "outcome", res.Outcome, "reason", res.Reason)
	return res, d.verdict(res)
}

// verdict turns a finished operation's result into the caller's error.
func (d *directOp) verdict(res machine.Result) error {
	vm := res.VMs[0]
	if res.Committed && vm.Outcome == res.Outcome && (res.Kind != machine.KindCheckpoint || res.Checkpoint == machine.CheckpointComplete) {
		return nil
	}
	d.mu.Lock()
	failure := d.failure
	d.mu.Unlock()
	if failure != nil && (!res.Committed || res.Checkpoint == machine.CheckpointFailed) {
		return failure
	}
	sentinel := ErrInvalidState
	if res.Kind == machine.KindMigrate {
		sentinel = ErrMigration
	}
	return fmt.Errorf("vm %q: %s %s (%s%s): %w", vm.Name, res.Kind, vm.Outcome, res.Reason, vm.Error, sentinel)
}

func (h *Host) opsDir() string { return filepath.Join(h.cfg.StateDir, "ops") }

func (h *Host) directPath(id string) string { return filepath.Join(h.opsDir(), id+".json") }

// journalDirect makes d's state durable before its next actions go out.
// The journal is a file of JSON records, one a line, the last complete one
// in force: its first record is written atomically (it replaces whatever
// a previous hostd left), the next ones are appended, one fdatasync each.
func (h *Host) journalDirect(d *directOp) error {
	if d.Op.Done() {
		// Its end is the journal's removal, next: a crash before it
		// leaves the last state, whose closing steps a restarted hostd
		// runs again (idempotent).
		return nil
	}
	data, err := json.Marshal(d)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if d.journal != nil {
		if _, err := d.journal.Write(data); err != nil {
			return err
		}
		return syscall.Fdatasync(int(d.journal.Fd()))
	}
	path := h.directPath(d.Op.ID)
	if err := atomicfile.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	d.journal, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	return err
}

// readJournal returns a direct operation's journal's last complete record
// (a record torn by a crash was written by a hostd that died before its
// actions went out).
func readJournal(path string) (*directOp, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	lines := bytes.Split(data, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		d := &directOp{}
		if err := json.Unmarshal(lines[i], d); err == nil && d.Op != nil {
			return d, nil
		}
	}
	return nil, fmt.Errorf("%s: no complete record: %w", path, ErrInvalidState)
}

// execDirect executes one action of d and answers it.
func (h *Host) execDirect(ctx context.Context, d *directOp, a machine.Action) machine.Event {
	ctx, cancel := context.WithDeadline(ctx, a.Deadline)
	defer cancel()
	var res StepResult
	switch {
	case a.Type == machine.RecordCheckpoint:
		res.OK = true // a checkpoint's record here is its manifest
	case a.Host == localHost:
		res = h.localStep(ctx, d, a)
		crashPoint(string(d.Op.Kind)+":"+string(a.Type), h.log)
	default:
		if res = h.peerStep(ctx, d, a); !res.OK && h.peerDown(d.To) {
			return machine.HostDown{Host: a.Host, Now: time.Now()}
		}
	}
	if !res.OK && (forwardAction(a.Type) || a.Type == machine.WaitSave) {
		d.mu.Lock()
		if d.failure == nil {
			d.failure = errorCodes.Decode(&jsonapi.Error{Code: res.Code, Message: res.Reason})
		}
		d.mu.Unlock()
	}
	// A CancelMigrate refused as the VM runs there: the move happened.
	running := a.Type == machine.CancelMigrate && res.Code == codeOf(ErrInvalidState)
	return machine.ActionResult{ID: a.ID, OK: res.OK, Reason: res.Reason, Digest: res.Digest,
		Pause: res.Pause, SnapshotAt: res.SnapshotAt, Running: running, Now: time.Now()}
}

func forwardAction(t machine.ActionType) bool {
	switch t {
	case machine.Prepare, machine.Detach, machine.Stop, machine.Save, machine.Migrate, machine.Launch, machine.Restore,
		machine.Arm, machine.Fence, machine.Point, machine.Replace:
		return true
	}
	return false
}

// localStep runs a on this host as the step hostd runs for a coordinator.
func (h *Host) localStep(ctx context.Context, d *directOp, a machine.Action) StepResult {
	phase := string(a.Type)
	if a.Type == machine.WaitSave {
		phase = "stream"
	}
	d.progress(Progress{Phase: phase})
	d.mu.Lock()
	quit := d.Quit && d.saved // saved: the checkpoint committed
	d.mu.Unlock()
	switch {
	case a.Type == machine.Prepare && d.NoGuest:
		return StepResult{OK: true}
	case quit && a.Type == machine.Attach:
		return StepResult{OK: true} // the VM quits: nothing to plug
	case quit && a.Type == machine.Resume:
		return d.quit(ctx, h, a.VM)
	case a.Type == machine.Kill && d.Op.Kind == machine.KindRestart && !h.startedSince(a.VM, d.Op.StartedAt):
		return StepResult{OK: true} // not the restore's VM: a stopped one it was to replace, or none
	}
	if a.Type == machine.Launch {
		return h.Step(ctx, d.stepRequest(a)) // beside the Detach: it takes no lock of the VM
	}
	d.steps.Lock()
	defer d.steps.Unlock()
	res := h.Step(ctx, d.stepRequest(a))
	if res.OK {
		d.mu.Lock()
		switch a.Type {
		case machine.Point, machine.Replace:
			d.note = res.Note // a live save taken stop-and-save; an old binary kept
		case machine.Stop:
			d.stopped = timeNow()
		case machine.Save:
			d.saved = true
		case machine.WaitSave:
			d.pause, d.snapshotAt = res.Pause, res.SnapshotAt
		case machine.Resume:
			d.resumed = timeNow()
		}
		d.mu.Unlock()
	}
	return res
}

// startedSince reports whether the VM's QEMU was started at or after t.
func (h *Host) startedSince(name string, t time.Time) bool {
	vm, err := h.Get(name)
	if err != nil {
		return false
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.rt.PID != 0 && !vm.rt.StartedAt.Before(t)
}

// quit ends a checkpointed VM's QEMU instead of resuming it; its guest is
// told "restored" by whoever restores the checkpoint.
func (d *directOp) quit(ctx context.Context, h *Host, name string) StepResult {
	vm, err := h.Get(name)
	if err == nil {
		err = vm.Stop(ctx, time.Millisecond)
	}
	if err != nil {
		return StepResult{Reason: err.Error(), Code: codeOf(err)}
	}
	d.mu.Lock()
	d.resumed = timeNow()
	d.mu.Unlock()
	return StepResult{OK: true}
}

func (d *directOp) stepRequest(a machine.Action) StepRequest {
	req := StepRequest{ID: a.ID.String(), Op: a.ID.Op, Kind: string(a.Type), VM: a.VM, Deadline: a.Deadline}
	switch a.Type {
	case machine.Prepare:
		req.Prepare = &PrepareArgs{Operation: string(d.Op.Kind), Freeze: a.Freeze}
	case machine.Resume:
		req.Resume = &ResumeArgs{Outcome: a.Outcome}
	case machine.Arm:
		req.Save = &SaveArgs{Dir: d.Dir, Bandwidth: a.Bandwidth}
	case machine.Save, machine.Point, machine.WaitSave, machine.Restore, machine.DeleteArtifacts:
		req.Save = &SaveArgs{Dir: d.Dir, Bandwidth: d.MaxBandwidth}
	case machine.Launch:
		req.Migrate = &MigrateArgs{Dest: d.To, Grant: d.Grant}
	case machine.Migrate:
		req.Migrate = &MigrateArgs{Dest: d.To, Grant: d.Grant, MaxBandwidth: d.MaxBandwidth,
			DowntimeLimit: d.DowntimeLimit, Capabilities: d.Capabilities, Progress: d.migrating, CopyStorage: a.CopyStorage}
	case machine.Replace:
		req.Replace = &ReplaceArgs{QEMU: d.QEMU, Transferred: func(n int64) {
			d.mu.Lock()
			d.bytes = n
			d.mu.Unlock()
		}}
	}
	return req
}

func (d *directOp) migrating(mi qmp.MigrationInfo) {
	d.mu.Lock()
	d.mig = mi
	d.mu.Unlock()
	d.progress(Progress{Phase: "migrate", Transferred: mi.RAM.Transferred, Total: mi.RAM.Total,
		Remaining: mi.RAM.Remaining, MbPS: mi.RAM.MbPS})
}

// peerStep runs a at a migration's destination through its peer
// endpoints: Resume is FinishIncoming (which attaches that host's devices
// too), CancelMigrate is AbortIncoming.
func (h *Host) peerStep(ctx context.Context, d *directOp, a machine.Action) StepResult {
	dest := h.peer(d.To)
	var err error
	switch a.Type {
	case machine.Attach:
		return StepResult{OK: true}
	case machine.CancelMigrate:
		if err = dest.AbortIncoming(ctx, a.VM); errors.Is(err, ErrNotFound) {
			err = nil // no copy there
		}
	case machine.Resume:
		d.progress(Progress{Phase: "resume at destination"})
		var info VMInfo
		if info, err = dest.FinishIncoming(ctx, a.VM); err != nil {
			// A repeated Resume: the first one may have run it.
			if st, serr := dest.Status(ctx, a.VM); serr == nil && st.State == "running" {
				info, err = st, nil
			}
		}
		d.mu.Lock()
		d.destVM = info
		d.mu.Unlock()
	default:
		err = fmt.Errorf("step %s at a destination: %w", a.Type, ErrInvalidState)
	}
	if err != nil {
		return StepResult{Reason: fmt.Sprintf("destination %s: %v", d.To, err), Code: codeOf(err)}
	}
	return StepResult{OK: true}
}

// peerDown reports whether a destination hostd is gone: it does not
// answer at all, three times (an error answer is an answer). A host
// reported down runs no copy of the VM that anyone will ever resume.
func (h *Host) peerDown(addr string) bool {
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := h.peer(addr).Host(ctx)
		cancel()
		if err == nil || codeOf(err) != "internal" {
			return false
		}
		time.Sleep(300 * time.Millisecond)
	}
	return true
}

// recoverDirect finishes every direct operation a previous hostd left
// unfinished: the steps it was running here are answered failed (their
// effect is unknown; the machine undoes them), and the operation is
// cancelled, so it rolls back, or goes forward if it was past its commit
// point.
func (h *Host) recoverDirect() {
	if err := atomicfile.MkdirAll(h.opsDir(), 0o700); err != nil {
		h.log.Error("direct operations' journal directory", "err", err)
	}
	files, _ := filepath.Glob(filepath.Join(h.opsDir(), "*.json"))
	for _, f := range files {
		d, err := readJournal(f)
		if err != nil || !strings.HasSuffix(f, d.Op.ID+".json") {
			h.log.Error("unreadable direct operation journal: left for an operator", "file", f, "err", err)
			continue
		}
		d.saved = d.Op.VMs[0].Save == machine.StatusOK
		now := time.Now()
		var acts []machine.Action
		for _, a := range d.Op.Recover(now) {
			if a.Host == localHost && forwardAction(a.Type) {
				acts = append(acts, d.Op.Step(machine.ActionResult{ID: a.ID, Reason: "hostd restarted", Now: now})...)
				continue
			}
			acts = append(acts, a)
		}
		acts = append(acts, d.Op.Step(machine.Cancel{Reason: "hostd restarted", Now: now})...)
		h.log.Warn("recovering a direct operation left by a previous hostd", "op", d.Op.ID, "vm", d.Op.Job, "phase", d.Op.Phase)
		go func() {
			if _, err := h.runDirect(d, acts); err != nil {
				h.log.Warn("recovered direct operation", "op", d.Op.ID, "err", err)
			}
		}()
	}
}

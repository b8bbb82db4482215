package hostd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Steps are the pieces of a job operation that the coordinator drives one
// VM at a time (prepare, detach, stop, save, migrate, restore, and their
// compensations), so that a job's VMs pass every phase together.
//
// Contract with the coordinator:
//   - De-duplication: a step carries its action id; a repeated id returns
//     the first execution's result without running it again.
//   - Fencing: once a closing step (abort, attach, resume, kill,
//     cancel-migrate, delete-artifacts) of an operation ran for a VM, that
//     operation's forward steps for the VM are refused.
//   - Leases: a step that leaves a VM paused, detached or in a guest round
//     holds a lease; the coordinator renews it. If the lease runs out (the
//     coordinator is gone), hostd undoes the operation for that VM by
//     itself: re-attach, resume, abort the guest round. A migration source
//     is resumed only once its destination's copy was cancelled; if the
//     destination already runs the VM, the source copy is killed instead.

// Step kinds.
const (
	StepPrepare         = "prepare"
	StepDetach          = "detach"
	StepStop            = "stop"
	StepSave            = "save"
	StepMigrate         = "migrate"
	StepRestore         = "restore"
	StepAttach          = "attach"
	StepResume          = "resume"
	StepAbort           = "abort"
	StepKill            = "kill"
	StepCancelMigrate   = "cancel-migrate"
	StepDeleteArtifacts = "delete-artifacts"
	// StepSaveWait waits for a live save's stream and returns its digest.
	StepSaveWait = "save-wait"
)

// StepRequest is one action of a coordinator operation.
type StepRequest struct {
	ID      string `json:"id"` // the action id, for de-duplication
	Op      string `json:"op"` // the operation id, for fencing and leases
	Kind    string `json:"kind"`
	VM      string `json:"vm"`
	OpKind  string `json:"op_kind,omitempty"` // checkpoint | migrate | restart: what the guest is told is coming
	Outcome string `json:"outcome,omitempty"`
	// Dir is the VM's checkpoint directory (save, restore,
	// delete-artifacts).
	Dir string `json:"dir,omitempty"`
	// Dest is the destination hostd's API address (migrate).
	Dest string `json:"dest,omitempty"`
	Live bool   `json:"live,omitempty"`
	// Bandwidth caps a live save's stream (bytes/s).
	Bandwidth int64 `json:"bandwidth,omitempty"`
	// Freeze (prepare of a migration): dependency-aware, see MigrateOptions.
	Freeze bool `json:"freeze,omitempty"`
	// Lease bounds how long the VM may stay paused, detached or in a
	// guest round without the coordinator renewing.
	Lease    time.Duration `json:"lease_ns,omitempty"`
	Deadline time.Time     `json:"deadline,omitzero"`
	// Grant (migrate) is the coordinator's signed permission for this
	// host to hand the VM to Dest; the source forwards it.
	Grant *Grant `json:"grant,omitempty"`

	// note collects what the step did differently from what was asked.
	note *string
}

// notef says how a step departed from its request (it still succeeded).
func (r StepRequest) notef(format string, a ...any) {
	if r.note != nil {
		*r.note = fmt.Sprintf(format, a...)
	}
}

// StepResult answers a step.
type StepResult struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	Code   string `json:"code,omitempty"`
	// Digest identifies a saved checkpoint (sha256 of its manifest).
	Digest string `json:"digest,omitempty"`
	// Pause (save-wait of a live save): how long the vCPUs stood still
	// for the snapshot point.
	Pause time.Duration `json:"pause_ns,omitempty"`
	// SnapshotAt: when the vCPUs ran again after it (QEMU's clock).
	SnapshotAt time.Time `json:"snapshot_at,omitzero"`
	// Note says how a successful step departed from its request, e.g. a
	// live save taken stop-and-save, and why.
	Note string `json:"note,omitempty"`
}

func forwardStep(kind string) bool {
	switch kind {
	case StepPrepare, StepDetach, StepStop, StepSave, StepMigrate, StepRestore:
		return true
	}
	return false
}

// stepState is hostd's memory of coordinator steps.
type stepState struct {
	mu       sync.Mutex
	results  map[string]StepResult
	order    []string
	inflight map[string]chan struct{}
	fenced   map[string]bool // vm + "\x00" + op
	leases   map[string]*lease
}

// lease is a coordinator's hold on a VM.
type lease struct {
	Op     string        `json:"op"`
	Until  time.Time     `json:"until"`
	Period time.Duration `json:"period"`
	// Dest is set on a migration source whose stream completed: its
	// destination holds a paused copy.
	Dest string `json:"dest,omitempty"`
}

const maxRemembered = 4096

func newStepState() *stepState {
	return &stepState{results: map[string]StepResult{}, inflight: map[string]chan struct{}{},
		fenced: map[string]bool{}, leases: map[string]*lease{}}
}

// Step runs one coordinator step, de-duplicated by its id.
func (h *Host) Step(ctx context.Context, req StepRequest) StepResult {
	st := h.steps
	for {
		st.mu.Lock()
		if r, ok := st.results[req.ID]; ok {
			st.mu.Unlock()
			return r
		}
		wait, busy := st.inflight[req.ID]
		if !busy {
			st.inflight[req.ID] = make(chan struct{})
			st.mu.Unlock()
			break
		}
		st.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return StepResult{Reason: ctx.Err().Error(), Code: "deadline"}
		}
	}
	if !req.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
		defer cancel()
	}
	start := timeNow()
	var ls *liveSave
	var err error
	var note string
	req.note = &note
	if req.Kind == StepSaveWait {
		ls, err = h.saveWaitStep(ctx, req)
	} else {
		err = h.step(ctx, req)
	}
	res := StepResult{OK: err == nil}
	if ls != nil {
		res.Pause, res.SnapshotAt = ls.pause, ls.at
	}
	if err == nil {
		res.Note = note
	}
	if err != nil {
		res.Reason, res.Code = err.Error(), codeOf(err)
	} else if req.Kind == StepSaveWait || req.Kind == StepSave {
		res.Digest, err = fileDigest(filepath.Join(req.Dir, manifestName))
		switch {
		case err != nil && req.Kind == StepSave && req.Live:
			// Streaming: the digest comes with save-wait.
			res.Digest, err = "pending:"+req.ID, nil
		case err != nil:
			res = StepResult{Reason: err.Error(), Code: codeOf(err)}
		}
	}
	h.metrics.observe("step_"+req.Kind, resultLabel(err), start)
	h.log.Info("step", "id", req.ID, "kind", req.Kind, "vm", req.VM, "ok", res.OK, "reason", res.Reason,
		"note", res.Note, "took", timeNow().Sub(start))
	st.mu.Lock()
	st.results[req.ID] = res
	st.order = append(st.order, req.ID)
	if len(st.order) > maxRemembered {
		delete(st.results, st.order[0])
		st.order = st.order[1:]
	}
	close(st.inflight[req.ID])
	delete(st.inflight, req.ID)
	st.mu.Unlock()
	return res
}

func (h *Host) fence(vm, op string) {
	h.steps.mu.Lock()
	h.steps.fenced[vm+"\x00"+op] = true
	h.steps.mu.Unlock()
}

func (h *Host) isFenced(vm, op string) bool {
	h.steps.mu.Lock()
	defer h.steps.mu.Unlock()
	return h.steps.fenced[vm+"\x00"+op]
}

func (h *Host) setLease(vm, op string, d time.Duration, dest string) {
	if d <= 0 {
		return
	}
	h.steps.mu.Lock()
	l := h.steps.leases[vm]
	if l == nil || l.Op != op {
		l = &lease{Op: op}
		h.steps.leases[vm] = l
	}
	l.Until, l.Period = timeNow().Add(d), d
	if dest != "" {
		l.Dest = dest
	}
	cp := *l
	h.steps.mu.Unlock()
	h.persistLease(vm, &cp)
}

func (h *Host) dropLease(vm string) {
	h.steps.mu.Lock()
	delete(h.steps.leases, vm)
	h.steps.mu.Unlock()
	h.persistLease(vm, nil)
}

// persistLease records the lease (or its end) in the VM's runtime state.
func (h *Host) persistLease(name string, l *lease) {
	vm, err := h.Get(name)
	if err != nil {
		return
	}
	vm.mu.Lock()
	vm.rt.Lease = l
	vm.saveRuntime()
	vm.mu.Unlock()
}

// RenewLeases extends every lease an operation holds on this host.
func (h *Host) RenewLeases(op string, d time.Duration) int {
	h.steps.mu.Lock()
	defer h.steps.mu.Unlock()
	n := 0
	for _, l := range h.steps.leases {
		if l.Op == op {
			l.Until, l.Period = timeNow().Add(d), d
			n++
		}
	}
	return n
}

func (h *Host) step(ctx context.Context, req StepRequest) error {
	if req.VM == "" || req.Op == "" || req.ID == "" {
		return fmt.Errorf("step: id, op and vm are required: %w", ErrInvalidSpec)
	}
	if forwardStep(req.Kind) {
		if h.isFenced(req.VM, req.Op) {
			return fmt.Errorf("vm %q: operation %s was already rolled back here: %w", req.VM, req.Op, ErrInvalidState)
		}
	} else {
		h.fence(req.VM, req.Op)
	}
	switch req.Kind {
	case StepRestore:
		if req.Dir == "" {
			return fmt.Errorf("restore: dir is missing: %w", ErrInvalidSpec)
		}
		if _, err := h.Restore(ctx, RestoreOptions{Dir: req.Dir, Name: req.VM, Paused: true, NoGuest: true}, nil); err != nil {
			return err
		}
		h.setLease(req.VM, req.Op, req.Lease, "")
		return nil
	case StepDeleteArtifacts:
		if req.Dir == "" || !filepath.IsAbs(req.Dir) {
			return fmt.Errorf("delete-artifacts: dir %q is not an absolute path: %w", req.Dir, ErrInvalidSpec)
		}
		return os.RemoveAll(req.Dir)
	}
	vm, err := h.Get(req.VM)
	if err != nil {
		switch req.Kind {
		case StepKill, StepCancelMigrate, StepAbort:
			return nil // nothing to undo
		}
		return err
	}
	if err := vm.lock("step " + req.Kind); err != nil {
		return err
	}
	defer vm.unlock()
	switch req.Kind {
	case StepPrepare:
		c, err := vm.prepareGuestFreeze(ctx, guestOp(req.OpKind), false, req.Freeze && guestOp(req.OpKind) == "migrate")
		if err != nil {
			return err
		}
		c.keep()
		h.setLease(req.VM, req.Op, req.Lease, "")
		return nil
	case StepDetach:
		h.setLease(req.VM, req.Op, req.Lease, "")
		if err := vm.detachAll(ctx); err != nil {
			return err
		}
		if req.Live && req.OpKind == "checkpoint" && req.Dir != "" {
			// Arm the snapshot now, while the VM runs, so that the save
			// after the job's STOP barrier is a single QMP command.
			if err := vm.armStep(ctx, req); err != nil {
				vm.log.Warn("live checkpoint not armed in advance (the save will try again)", "err", err)
			}
		}
		return nil
	case StepStop:
		mon, err := vm.monitor()
		if err != nil {
			return err
		}
		h.setLease(req.VM, req.Op, req.Lease, "")
		live := req.Live && req.OpKind == "checkpoint"
		var unfenced error
		if live && len(vm.Spec().Disks) == 0 {
			if h.cfg.LiveMode == "precopy" {
				// A running VM's cut is its snapshot point, at the end of
				// the save step's copy, where it is fenced (fence.go); it
				// runs on until then.
				return nil
			}
			// Its snapshot point is QEMU's, in the save step: fenced
			// from now, it runs on (fence.go).
			unfenced = vm.fence(ctx, mon)
			if unfenced == nil {
				return nil
			}
			vm.log.Warn("the vm stops for the job's cut instead", "err", unfenced)
			req.notef("stopped for the cut (no network fence: %v)", unfenced)
		}
		if err := mon.Stop(ctx); err != nil {
			return err
		}
		vm.mu.Lock()
		vm.stoppedAt = timeNow()
		vm.mu.Unlock()
		if live && unfenced == nil {
			// Its disks are copied at the cut, with the vCPUs stopped;
			// QEMU runs it again at its snapshot point, fenced from
			// here (fence.go; with live_mode snapshot the others'
			// fences would do).
			if err := vm.fence(ctx, mon); err != nil {
				return err // the rollback runs it again
			}
		}
		return nil
	case StepSave:
		mon, err := vm.monitor()
		if err != nil {
			return err
		}
		if st, err := mon.Status(ctx); err != nil || (st.Running && !req.Live) {
			// A live save may find the VM running: fenced, not stopped.
			return fmt.Errorf("vm %q: save needs a stopped vm (status %s, %v): %w", vm.name, st.Status, err, ErrInvalidState)
		}
		if req.Dir == "" {
			return fmt.Errorf("save: dir is missing: %w", ErrInvalidSpec)
		}
		vm.mu.Lock()
		round, armed := vm.rt.Round, req.Live && vm.armed != nil && vm.armed.dir == req.Dir
		vm.mu.Unlock()
		if !armed {
			vm.dropArm()
			if err := freshDir(req.Dir); err != nil {
				return err
			}
		}
		if req.Live {
			ls, err := vm.liveSaveNow(ctx, mon, req.Dir, round, req.Bandwidth, true, nil)
			if err == nil {
				// QEMU runs the vm again; the coordinator re-attaches and
				// resumes the job while the memory streams.
				vm.mu.Lock()
				vm.live = ls
				vm.mu.Unlock()
				h.setLease(req.VM, req.Op, req.Lease, "")
				return nil
			}
			if !errors.Is(err, ErrLiveUnsupported) {
				os.RemoveAll(req.Dir)
				return err
			}
			vm.log.Warn("live checkpoint unsupported here: stop-and-save instead", "err", err)
			req.notef("stop-and-save instead of live: %v", err)
			if err := freshDir(req.Dir); err != nil {
				return err
			}
		}
		if _, err := vm.writeCheckpoint(ctx, mon, req.Dir, round, func(Progress) {}); err != nil {
			os.RemoveAll(req.Dir)
			return err
		}
		h.setLease(req.VM, req.Op, req.Lease, "")
		return nil
	case StepMigrate:
		return vm.migrateStep(ctx, req)
	case StepAttach:
		vm.dropArm() // the operation did not use it
		if err := vm.completeIncoming(ctx); err != nil {
			return err
		}
		if !vm.running(ctx) {
			// Hot-plugged into a paused guest, a device can go unseen:
			// the resume that follows attaches it once the guest runs.
			return nil
		}
		return vm.attachAll(ctx)
	case StepResume:
		vm.dropArm() // the operation did not use it
		if err := vm.completeIncoming(ctx); err != nil {
			return err
		}
		mon, err := vm.monitor()
		if err != nil {
			return err
		}
		if st, err := mon.Status(ctx); err == nil && !st.Running {
			if err := mon.Cont(ctx); err != nil {
				return err
			}
		}
		vm.unfence(ctx)
		if err := vm.attachAll(ctx); err != nil {
			vm.log.Error("attach after resume", "err", err)
		}
		h.dropLease(req.VM)
		vm.finishRound(ctx, req.Outcome)
		return nil
	case StepAbort:
		vm.dropArm() // the operation did not use it
		vm.finishRound(ctx, "aborted")
		if vm.running(ctx) {
			h.dropLease(req.VM)
		}
		return nil
	case StepKill:
		vm.dropArm() // the operation did not use it
		h.dropLease(req.VM)
		vm.kill()
		h.forget(vm)
		return nil
	case StepCancelMigrate:
		vm.mu.Lock()
		incoming := vm.rt.Incoming
		vm.mu.Unlock()
		if !incoming && vm.running(ctx) {
			return fmt.Errorf("vm %q already runs here: %w", vm.name, ErrInvalidState)
		}
		h.dropLease(req.VM)
		vm.kill()
		h.forget(vm)
		return nil
	}
	return fmt.Errorf("step kind %q: %w", req.Kind, ErrInvalidSpec)
}

// armStep makes a live save ready for the save step that will follow.
func (vm *VM) armStep(ctx context.Context, req StepRequest) error {
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	vm.dropArm()
	if err := freshDir(req.Dir); err != nil {
		return err
	}
	a, err := vm.armLive(ctx, mon, req.Dir, req.Bandwidth)
	if err != nil {
		os.RemoveAll(req.Dir)
		return err
	}
	vm.mu.Lock()
	vm.armed = a
	vm.mu.Unlock()
	return nil
}

// freshDir makes dir exist and be empty (a retried step starts from
// nothing); every directory it creates is durable (its parent fsynced), so
// a crash cannot lose a checkpoint directory the coordinator recorded.
func freshDir(dir string) error {
	if err := mkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return err
	}
	os.RemoveAll(dir)
	return mkdir(dir, 0o700)
}

// guestOp maps an operation kind to what the guest is told is coming.
func guestOp(kind string) string {
	switch kind {
	case "restart":
		return "restore"
	case "evacuate":
		return "migrate"
	case "checkpoint", "migrate", "rejuvenate":
		return kind
	}
	return "checkpoint"
}

func (vm *VM) running(ctx context.Context) bool {
	mon, err := vm.monitor()
	if err != nil {
		return false
	}
	st, err := mon.Status(ctx)
	return err == nil && st.Running
}

// completeIncoming waits for an incoming migration's stream to complete;
// it does nothing on a VM that is not incoming.
func (vm *VM) completeIncoming(ctx context.Context) error {
	vm.mu.Lock()
	incoming := vm.rt.Incoming
	vm.mu.Unlock()
	if !incoming {
		return nil
	}
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	if _, err := mon.WaitMigration(ctx, 20*time.Millisecond, nil); err != nil {
		return fmt.Errorf("vm %q: incoming: %w", vm.name, err)
	}
	vm.mu.Lock()
	vm.rt.Incoming = false
	vm.saveRuntime()
	vm.mu.Unlock()
	return nil
}

// migrateStep streams the VM to a destination that keeps it paused; the
// source stays paused too until the coordinator resumes one of them.
func (vm *VM) migrateStep(ctx context.Context, req StepRequest) error {
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	if req.Dest == "" {
		return fmt.Errorf("migrate: dest is missing: %w", ErrInvalidSpec)
	}
	spec := vm.Spec()
	vm.mu.Lock()
	round := vm.rt.Round
	vm.mu.Unlock()
	dest := vm.h.peer(req.Dest)
	inc, err := dest.Incoming(ctx, IncomingRequest{Spec: spec, Absent: spec.passthrough(), Round: round,
		Op: req.Op, Lease: req.Lease, Grant: req.Grant})
	if err != nil {
		return fmt.Errorf("vm %q: destination %s: %w", vm.name, req.Dest, err)
	}
	var tun *outTunnel
	qemuURI := ""
	host, err := checkMigrationURI(inc.URI, req.Dest, vm.h.cfg.migrationPorts())
	if err == nil {
		tun, qemuURI, err = vm.streamTo(ctx, mon, inc.URI, host)
	}
	if err == nil {
		err = mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(64) << 30})
	}
	if err == nil {
		err = mon.Migrate(ctx, qemuURI)
	}
	if err == nil {
		_, err = mon.WaitMigration(ctx, 50*time.Millisecond, nil)
	}
	if err == nil {
		err = tun.finish()
	}
	if err != nil {
		mon.MigrateCancel(context.WithoutCancel(ctx))
		err = withTunnelErr(err, tun.abort(context.WithoutCancel(ctx), mon))
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		dest.AbortIncoming(actx, vm.name)
		cancel()
		return fmt.Errorf("vm %q: %w: %w", vm.name, ErrMigration, err)
	}
	vm.h.setLease(vm.name, req.Op, req.Lease, req.Dest)
	return nil
}

// expireLeases undoes, for every VM whose lease ran out, what the absent
// coordinator left: the VM runs again as it was.
func (h *Host) expireLeases() {
	now := timeNow()
	h.steps.mu.Lock()
	var due []string
	for vm, l := range h.steps.leases {
		if now.After(l.Until) {
			due = append(due, vm)
		}
	}
	h.steps.mu.Unlock()
	for _, name := range due {
		h.steps.mu.Lock()
		l := h.steps.leases[name]
		delete(h.steps.leases, name)
		h.steps.mu.Unlock()
		if l == nil {
			continue
		}
		h.persistLease(name, nil)
		h.fence(name, l.Op)
		vm, err := h.Get(name)
		if err != nil {
			continue
		}
		go vm.expire(l)
	}
}

func (vm *VM) expire(l *lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for vm.lock("lease expiry") != nil {
		select {
		case <-ctx.Done():
			vm.log.Error("lease expired but the vm stayed busy")
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer vm.unlock()
	vm.log.Warn("coordinator lease expired: undoing its operation here", "op", l.Op, "dest", l.Dest)
	vm.mu.Lock()
	incoming := vm.rt.Incoming
	vm.mu.Unlock()
	if incoming {
		// A destination copy nobody resumed: it must never run.
		vm.kill()
		vm.h.forget(vm)
		return
	}
	if l.Dest != "" {
		// A migration source: resume only if the destination's copy is
		// gone for sure.
		dest := vm.h.peer(l.Dest)
		err := dest.AbortIncoming(ctx, vm.name)
		switch {
		case err == nil, errors.Is(err, ErrNotFound):
		case errors.Is(err, ErrInvalidState):
			vm.log.Warn("destination runs the vm: killing the source copy", "dest", l.Dest)
			vm.kill()
			vm.h.forget(vm)
			return
		default:
			vm.log.Error("destination unreachable: the source copy stays paused for an operator", "dest", l.Dest, "err", err)
			return
		}
	}
	vm.attachAll(ctx)
	if mon, err := vm.monitor(); err == nil {
		if st, err := mon.Status(ctx); err == nil && !st.Running {
			mon.Cont(ctx)
		}
	}
	vm.unfence(ctx)
	vm.dropArm()
	vm.finishRound(ctx, "aborted")
}

// leaseLoop checks leases until ctx ends.
func (h *Host) leaseLoop(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h.expireLeases()
		}
	}
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hs := sha256.New()
	if _, err := io.Copy(hs, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(hs.Sum(nil)), nil
}

// saveWaitStep waits for a VM's live save into req.Dir to be complete.
// It does not take the VM's operation lock: the job's resume runs while
// the stream is still being written.
func (h *Host) saveWaitStep(ctx context.Context, req StepRequest) (*liveSave, error) {
	if req.VM == "" || req.Op == "" || req.ID == "" {
		return nil, fmt.Errorf("step: id, op and vm are required: %w", ErrInvalidSpec)
	}
	vm, err := h.Get(req.VM)
	if err != nil {
		return nil, err
	}
	vm.mu.Lock()
	ls := vm.live
	vm.mu.Unlock()
	if ls == nil || ls.dir != req.Dir {
		// Not live (it fell back) or already waited for: the manifest
		// says whether it is complete.
		_, err := ReadManifest(req.Dir)
		return nil, err
	}
	_, err = ls.wait(ctx)
	vm.mu.Lock()
	if vm.live == ls {
		vm.live = nil
	}
	vm.mu.Unlock()
	return ls, err
}

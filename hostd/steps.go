package hostd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/snapshot"
	"github.com/symvirt/symvirt/hostd/step"
)

// Steps are the pieces of a job operation that the coordinator drives one
// VM at a time (prepare, detach, stop, save, migrate, restore, and their
// compensations), so that a job's VMs pass every phase together.
//
// Contract with the coordinator:
//   - De-duplication: a step carries its action id; a repeated id returns
//     the first execution's result without running it again.
//   - Closed operations: once a closing step (abort, attach, resume, kill,
//     cancel-migrate, delete-artifacts) of an operation ran for a VM, the
//     operation is closed for that VM: its forward steps are refused.
//   - Restarts: a VM's closed operations, its recent steps' answers, its
//     lease and its live stream in flight are persisted with its runtime
//     state, so a restarted hostd refuses, answers and undoes as the one
//     before it would have. A live stream cannot outlive the hostd that
//     wrote it: its wait-save answers failed (ErrStreamLost).
//   - Leases: a step that leaves a VM paused, detached or in a guest round
//     holds a lease; the coordinator renews it. If the lease runs out (the
//     coordinator is gone), hostd closes the operation for that VM and
//     releases the VM: a one-VM operation of coord/machine (release.go)
//     undoes what the operation may have left.

// stepState is hostd's memory of coordinator steps. Each VM's part of it
// is also persisted in its runtime state (ClosedOps, Answers, Lease), from
// which New loads it.
type stepState struct {
	mu       sync.Mutex
	results  map[string]StepResult
	order    []string
	inflight map[string]chan struct{}
	closed   map[string]bool // vm + "\x00" + op
	leases   map[string]*lease
}

// stepAnswer is a step's persisted result, by action id.
type stepAnswer struct {
	ID     string     `json:"id"`
	Result StepResult `json:"result"`
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

// Per VM, the persisted answers and closed operations are bounded: a
// coordinator re-sends an action within its operation, and a VM is in one
// operation at a time.
const (
	maxAnswers   = 64
	maxClosedOps = 16
)

func newStepState() *stepState {
	return &stepState{results: map[string]StepResult{}, inflight: map[string]chan struct{}{},
		closed: map[string]bool{}, leases: map[string]*lease{}}
}

// Step runs one coordinator step, de-duplicated by its id.
func (h *Host) Step(ctx context.Context, req StepRequest) StepResult {
	if res, ok := h.admitEpoch(req); !ok {
		return res
	}
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
	res := h.runStep(ctx, req)
	var err error
	if !res.OK {
		err = errors.New(res.Reason)
	}
	h.metrics.observe("step_"+req.Kind, resultLabel(err), start)
	h.log.Info("step", "id", req.ID, "kind", req.Kind, "vm", req.VM, "ok", res.OK, "reason", res.Reason,
		"note", res.Note, "took", timeNow().Sub(start))
	if !h.drivenHere(req.VM, req.Op) {
		h.updateRuntime(req.VM, func(rt *runtimeState) {
			rt.Answers = appendBounded(rt.Answers, stepAnswer{ID: req.ID, Result: res}, maxAnswers)
		})
	}
	st.mu.Lock()
	st.remember(req.ID, res)
	close(st.inflight[req.ID])
	delete(st.inflight, req.ID)
	st.mu.Unlock()
	return res
}

// remember keeps a step's result for de-duplication; callers hold st.mu.
func (st *stepState) remember(id string, res StepResult) {
	if _, ok := st.results[id]; !ok {
		st.order = append(st.order, id)
	}
	st.results[id] = res
	if len(st.order) > maxRemembered {
		delete(st.results, st.order[0])
		st.order = st.order[1:]
	}
}

// updateRuntime changes a VM's runtime state and persists it if it
// changed (a VM that is not, or no longer, here has none: hostd's memory
// is all there is).
func (h *Host) updateRuntime(name string, change func(*runtimeState)) {
	vm, err := h.Get(name)
	if err != nil {
		return
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	change(&vm.rt)
	vm.saveRuntime()
}

// closeOp closes op for vm: its forward steps are refused from now on,
// across restarts. It is persisted before the closing step acts (by the
// operation's journal for one driven here).
func (h *Host) closeOp(name, op string) {
	h.steps.mu.Lock()
	h.steps.closed[name+"\x00"+op] = true
	h.steps.mu.Unlock()
	if h.drivenHere(name, op) {
		return
	}
	h.updateRuntime(name, func(rt *runtimeState) {
		if !slices.Contains(rt.ClosedOps, op) {
			rt.ClosedOps = appendBounded(rt.ClosedOps, op, maxClosedOps)
		}
	})
}

func (h *Host) isClosed(vm, op string) bool {
	h.steps.mu.Lock()
	defer h.steps.mu.Unlock()
	return h.steps.closed[vm+"\x00"+op]
}

// loadSteps takes back what a VM's runtime state kept of the steps: its
// closed operations, its steps' answers and its lease, which gets one more
// period for the coordinator to renew it.
func (h *Host) loadSteps(vm *VM) {
	st := h.steps
	vm.mu.Lock()
	defer vm.mu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, op := range vm.rt.ClosedOps {
		st.closed[vm.name+"\x00"+op] = true
	}
	for _, a := range vm.rt.Answers {
		st.remember(a.ID, a.Result)
	}
	if l := vm.rt.Lease; l != nil {
		st.leases[vm.name] = &lease{Op: l.Op, Dest: l.Dest, Until: timeNow().Add(l.Period), Period: l.Period}
	}
}

// appendBounded appends v to s and keeps the last n.
func appendBounded[T any](s []T, v T, n int) []T {
	s = append(s, v)
	if len(s) > n {
		s = slices.Clone(s[len(s)-n:])
	}
	return s
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
	h.updateRuntime(vm, func(rt *runtimeState) { rt.Lease = &cp })
}

func (h *Host) dropLease(vm string) {
	h.steps.mu.Lock()
	delete(h.steps.leases, vm)
	h.steps.mu.Unlock()
	h.updateRuntime(vm, func(rt *runtimeState) { rt.Lease = nil })
}

// RenewLeases extends every lease an operation holds on this host, unless
// the renewal comes from a deposed coordinator (an older epoch): its
// operation is then left to expire.
func (h *Host) RenewLeases(op string, d time.Duration, epoch int64) (int, error) {
	if err := h.fenceEpoch(epoch); err != nil {
		h.log.Warn("lease renewal refused", "op", op, "epoch", epoch, "err", err)
		h.metrics.ops.WithLabelValues("lease_renew", codeOf(err)).Inc()
		return 0, err
	}
	h.steps.mu.Lock()
	defer h.steps.mu.Unlock()
	n := 0
	for _, l := range h.steps.leases {
		if l.Op == op {
			l.Until, l.Period = timeNow().Add(d), d
			n++
		}
	}
	return n, nil
}

// runStep executes a validated step and builds its result.
func (h *Host) runStep(ctx context.Context, req StepRequest) StepResult {
	if err := req.Validate(); err != nil {
		return StepResult{Reason: err.Error(), Code: codeOf(err)}
	}
	if req.Kind == StepWaitSave {
		return h.waitSaveStep(ctx, req)
	}
	note, err := h.step(ctx, req)
	if err != nil {
		return StepResult{Reason: err.Error(), Code: codeOf(err)}
	}
	res := StepResult{OK: true, Note: note}
	if req.Kind == StepSave {
		if res.Digest, err = fileDigest(filepath.Join(req.Save.Dir, manifestName)); err != nil {
			return StepResult{Reason: err.Error(), Code: codeOf(err)}
		}
	}
	return res
}

// step runs one step under the closed-operation rule; it returns how a
// successful step departed from its request.
func (h *Host) step(ctx context.Context, req StepRequest) (string, error) {
	if step.Forward(req.Kind) {
		if h.isClosed(req.VM, req.Op) {
			return "", fmt.Errorf("vm %q: operation %s is closed here (its closing steps ran): %w", req.VM, req.Op, ErrInvalidState)
		}
	} else {
		h.liftFenceFirst(ctx, req)
		h.closeOp(req.VM, req.Op)
	}
	switch req.Kind {
	case StepRestore:
		if _, err := h.Restore(ctx, RestoreOptions{Dir: req.Save.Dir, Name: req.VM, Paused: true, NoGuest: true}, nil); err != nil {
			return "", err
		}
		h.setLease(req.VM, req.Op, req.Lease, "")
		return "", nil
	case StepDeleteArtifacts:
		return "", h.removeCheckpoint(ctx, req.Save.Dir)
	}
	vm, err := h.Get(req.VM)
	if err != nil {
		switch req.Kind {
		case StepKill, StepCancelMigrate, StepAbort:
			return "", nil // nothing to undo
		}
		return "", err
	}
	if req.Kind == StepLaunch {
		return "", vm.launchStep(ctx, req) // beside the Detach holding the VM's lock
	}
	if err := vm.lockStep(ctx, req); err != nil {
		return "", err
	}
	defer vm.unlock()
	if fn, ok := forwardSteps[req.Kind]; ok {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		vm.setForward(req.Op, cancel)
		defer vm.setForward("", nil)
		return fn(vm, ctx, req)
	}
	vm.dropArm() // an arm the closing operation did not use
	vm.h.forgetLaunched(vm.name, req.Op)
	return "", closingSteps[req.Kind](vm, ctx, req)
}

// forwardSteps move an operation on; each may leave the VM held (paused,
// detached, fenced, in a guest round) under the step's lease.
var forwardSteps = map[string]func(*VM, context.Context, StepRequest) (string, error){
	StepPrepare: (*VM).prepareStep,
	StepDetach:  (*VM).detachStep,
	StepArm:     (*VM).armStep,
	StepStop:    (*VM).stopStep,
	StepFence:   (*VM).fenceStep,
	StepSave:    (*VM).saveStep,
	StepPoint:   (*VM).pointStep,
	StepReplace: (*VM).replaceStep,
	StepMigrate: func(vm *VM, ctx context.Context, req StepRequest) (string, error) {
		return "", vm.migrateStep(ctx, req)
	},
}

// closingSteps end or undo an operation's hold on the VM; each is
// harmless when there is nothing to undo.
var closingSteps = map[string]func(*VM, context.Context, StepRequest) error{
	StepAttach:        (*VM).attachStep,
	StepResume:        (*VM).resumeStep,
	StepAbort:         (*VM).abortStep,
	StepKill:          (*VM).killStep,
	StepCancelMigrate: (*VM).cancelMigrateStep,
}

func (vm *VM) prepareStep(ctx context.Context, req StepRequest) (string, error) {
	op := req.Prepare.Operation
	c, err := vm.prepareGuest(ctx, guestOp(op), req.Prepare.Freeze && guestOp(op) == "migrate")
	if err != nil {
		return "", err
	}
	c.keep()
	vm.h.setLease(req.VM, req.Op, req.Lease, "")
	return "", nil
}

func (vm *VM) detachStep(ctx context.Context, req StepRequest) (string, error) {
	vm.h.setLease(req.VM, req.Op, req.Lease, "")
	return "", vm.detachAll(ctx)
}

// armStep detaches the devices and makes the live save ready while the VM
// still runs, so that its snapshot point is a single QMP command.
func (vm *VM) armStep(ctx context.Context, req StepRequest) (string, error) {
	vm.h.setLease(req.VM, req.Op, req.Lease, "")
	if err := vm.detachAll(ctx); err != nil {
		return "", err
	}
	if err := vm.arm(ctx, req.Save.Dir, req.Save.Bandwidth); err != nil {
		vm.log.Warn("live checkpoint not armed in advance (the point will try again)", "err", err)
		return fmt.Sprintf("not armed in advance: %v", err), nil
	}
	return "", nil
}

func (vm *VM) stopStep(ctx context.Context, req StepRequest) (string, error) {
	mon, err := vm.monitor()
	if err != nil {
		return "", err
	}
	vm.h.setLease(req.VM, req.Op, req.Lease, "")
	if err := mon.Stop(ctx); err != nil {
		return "", err
	}
	vm.mu.Lock()
	vm.stoppedAt = timeNow()
	vm.mu.Unlock()
	return "", nil
}

// fenceStep readies a live checkpoint's cut for this VM: the network
// fence is armed, and its point step turns it on (fence.go); or, given
// the job's peers, the frames from them are held from now until the
// VM's point (peerhold.go). A VM that cannot be fenced or hold is
// stopped here instead, before any VM's point: stopped, it takes in
// nothing until it is resumed after the cut.
func (vm *VM) fenceStep(ctx context.Context, req StepRequest) (string, error) {
	mon, err := vm.monitor()
	if err != nil {
		return "", err
	}
	vm.h.setLease(req.VM, req.Op, req.Lease, "")
	var unfenced error
	if req.Fence != nil && len(req.Fence.Peers) > 0 {
		// The job's other VMs hold only what they receive: a whole-VM
		// fence here, on from this VM's point only, would let their
		// frames from after their points in before it.
		if unfenced = vm.holdPeers(ctx, mon, req.Op, req.Fence); unfenced == nil {
			return "", nil
		}
	} else if unfenced = vm.armFence(ctx, mon); unfenced == nil {
		return "", nil
	}
	vm.log.Warn("the vm stops for the job's cut instead", "err", unfenced)
	if _, err := vm.stopStep(ctx, req); err != nil {
		return "", err
	}
	return fmt.Sprintf("stopped for the cut (no network fence: %v)", unfenced), nil
}

// saveStep writes a stopped VM's checkpoint.
func (vm *VM) saveStep(ctx context.Context, req StepRequest) (string, error) {
	mon, err := vm.monitor()
	if err != nil {
		return "", err
	}
	if st, err := mon.Status(ctx); err != nil || st.Running {
		return "", fmt.Errorf("vm %q: save needs a stopped vm (status %s, %v): %w", vm.name, st.Status, err, ErrInvalidState)
	}
	vm.dropArm()
	dir := req.Save.Dir
	if err := freshDir(dir); err != nil {
		return "", err
	}
	if err := vm.writeCheckpoint(ctx, mon, dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	vm.h.setLease(req.VM, req.Op, req.Lease, "")
	return "", nil
}

// pointStep takes a live checkpoint's snapshot point: QEMU runs the VM
// again while its memory streams; wait-save reports the stream's end.
// Where a live save is impossible it saves stop-and-save (and says so).
func (vm *VM) pointStep(ctx context.Context, req StepRequest) (string, error) {
	dir := req.Save.Dir
	if err := vm.lostStream(dir); err != nil {
		return "", err // a re-sent point: the stream went with a hostd
	}
	if _, err := vm.holdFor(req.Op); err != nil {
		return "", err // its peers' frames went through meanwhile
	}
	defer vm.releaseHold() // the point is taken, or the cut abandoned
	mon, err := vm.monitor()
	if err != nil {
		return "", err
	}
	// Before the point: persisting waits behind the streams' writes, and
	// the job's fences stay up until the last point step has answered.
	vm.h.setLease(req.VM, req.Op, req.Lease, "")
	a, err := vm.takeArm(ctx, mon, dir, req.Save.Bandwidth)
	if st, serr := mon.Status(ctx); err == nil && a.Copying() && (serr != nil || !vm.precopies(st)) {
		// Stopped for the cut since its arm, QEMU ended its copy there (a
		// stopped VM needs no switchover ack) or will: its point is a
		// save of its own.
		a.Disarm()
		a, err = vm.takeArm(ctx, mon, dir, req.Save.Bandwidth)
	}
	if err == nil {
		if err = vm.startLiveSave(ctx, mon, req.Op, a); err == nil {
			return "", nil
		}
	}
	if !errors.Is(err, snapshot.ErrUnsupported) {
		os.RemoveAll(dir)
		return "", err
	}
	vm.log.Warn("live checkpoint unsupported here: stop-and-save instead", "err", err)
	if _, err := vm.stopStep(ctx, req); err != nil {
		return "", err
	}
	if _, err := vm.saveStep(ctx, req); err != nil {
		return "", err
	}
	return fmt.Sprintf("stop-and-save instead of live: %v", err), nil
}

func (vm *VM) attachStep(ctx context.Context, req StepRequest) error {
	if err := vm.completeIncoming(ctx); err != nil {
		return err
	}
	if !vm.running(ctx) {
		// Hot-plugged into a paused guest, a device can go unseen:
		// the resume that follows attaches it once the guest runs.
		return nil
	}
	return vm.attachAll(ctx)
}

func (vm *VM) resumeStep(ctx context.Context, req StepRequest) error {
	vm.stopFrames() // a source that runs again reads its own tap
	vm.mu.Lock()
	moved := vm.rt.Incoming
	vm.mu.Unlock()
	if moved {
		vm.boostAfterMove()
	}
	if err := vm.completeIncoming(ctx); err != nil {
		return err
	}
	// First: the job's last point is behind, and every peer waits.
	vm.unfence(ctx)
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	if st, err := mon.Status(ctx); err == nil && !st.Running {
		// A source after a migration over channels (migchannels.go).
		if err := vm.settleChannels(ctx, mon); err != nil {
			vm.log.Error("resume", "err", err)
		}
		if err := mon.Cont(ctx); err != nil {
			return err
		}
		vm.log.Debug("running", "outcome", req.Resume.Outcome)
		if moved {
			vm.announce(ctx, mon)
		}
	}
	if err := vm.attachAll(ctx); err != nil {
		vm.log.Error("attach after resume", "err", err)
	}
	vm.h.dropLease(req.VM)
	vm.finishRound(ctx, req.Resume.Outcome)
	return nil
}

func (vm *VM) abortStep(ctx context.Context, req StepRequest) error {
	vm.finishRound(ctx, "aborted")
	if vm.running(ctx) {
		vm.h.dropLease(req.VM)
	}
	return nil
}

func (vm *VM) killStep(ctx context.Context, req StepRequest) error {
	vm.h.dropLease(req.VM)
	vm.stopFrames()
	ram := vm.holdRAM()
	start := timeNow()
	vm.kill()
	vm.logPhase("kill_process", timeNow().Sub(start))
	vm.h.forget(vm)
	releaseRAM(ram)
	return nil
}

func (vm *VM) cancelMigrateStep(ctx context.Context, req StepRequest) error {
	vm.mu.Lock()
	incoming := vm.rt.Incoming
	vm.mu.Unlock()
	if !incoming && vm.running(ctx) {
		return fmt.Errorf("vm %q already runs here: %w", vm.name, ErrInvalidState)
	}
	vm.h.dropLease(req.VM)
	vm.kill()
	vm.h.forget(vm)
	return nil
}

// arm makes a live save into dir ready for the point step.
func (vm *VM) arm(ctx context.Context, dir string, bandwidth int64) error {
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	vm.populateRAM(ctx, "populate_ram_arm", true)
	a, err := vm.takeArm(ctx, mon, dir, bandwidth)
	if err != nil {
		return err
	}
	vm.prepareDisks(ctx, mon)
	vm.mu.Lock()
	vm.armed = a
	vm.mu.Unlock()
	vm.paceWriteback(dir)
	if st, err := mon.Status(ctx); err != nil || !vm.precopies(st) {
		return nil
	}
	err = snapshot.Copy(ctx, a, vm.log, vm.pid())
	if errors.Is(err, snapshot.ErrNoHold) {
		vm.log.Debug("live checkpoint copy left to the point", "err", err)
		return nil
	}
	if err != nil {
		vm.dropArm()
	}
	return err
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
	if _, err := mon.WaitMigration(ctx, migratePoll, nil); err != nil {
		return fmt.Errorf("vm %q: incoming: %w", vm.name, err)
	}
	vm.mu.Lock()
	vm.rt.Incoming = false
	vm.saveRuntime()
	vm.mu.Unlock()
	return nil
}

// expireLeases releases every VM whose lease ran out (release.go): the
// absent coordinator's operation is closed there, and undone.
func (h *Host) expireLeases() {
	now := timeNow()
	h.steps.mu.Lock()
	due := map[string]*lease{}
	for vm, l := range h.steps.leases {
		if now.After(l.Until) {
			due[vm] = l
			delete(h.steps.leases, vm)
		}
	}
	h.steps.mu.Unlock()
	for name, l := range due {
		h.closeOp(name, l.Op)
		if vm, err := h.Get(name); err == nil {
			go h.release(vm, l)
		}
	}
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
	fd, err := manifest.HashFile(path)
	return "sha256:" + fd.SHA256, err
}

// waitSaveStep waits for a VM's live save into its directory to be
// complete and answers with its digest. It does not take the VM's
// operation lock: the job's resume runs while the stream is written.
func (h *Host) waitSaveStep(ctx context.Context, req StepRequest) StepResult {
	fail := func(err error) StepResult { return StepResult{Reason: err.Error(), Code: codeOf(err)} }
	vm, err := h.Get(req.VM)
	if err != nil {
		return fail(err)
	}
	dir := req.Save.Dir
	if err := vm.lostStream(dir); err != nil {
		return fail(err)
	}
	vm.mu.Lock()
	ls := vm.live
	vm.mu.Unlock()
	var res StepResult
	if ls != nil && ls.dir == dir {
		err = ls.wait(ctx)
		vm.mu.Lock()
		if vm.live == ls {
			vm.live = nil
		}
		vm.mu.Unlock()
		if err != nil {
			return fail(err)
		}
		res.Pause, res.SnapshotAt = ls.pause, ls.at
	} else if _, err := ReadManifest(dir); err != nil {
		// Not live (it fell back) or already waited for: the manifest
		// says whether it is complete.
		return fail(err)
	}
	if res.Digest, err = fileDigest(filepath.Join(dir, manifestName)); err != nil {
		return fail(err)
	}
	res.OK = true
	return res
}

// lockStep takes vm's lock for a step. A closing step of the operation
// whose forward step holds the lock cancels that step and waits for it:
// the machine supersedes a forward step it stopped waiting for (a guest
// stuck before its safe point, an operator's cancel) with its
// compensation, which must not fail for being early.
func (vm *VM) lockStep(ctx context.Context, req StepRequest) error {
	err := vm.lock("step " + req.Kind)
	if err == nil || step.Forward(req.Kind) {
		return err
	}
	vm.mu.Lock()
	cancel := vm.fwdCancel
	same := cancel != nil && vm.fwdOp == req.Op
	vm.mu.Unlock()
	if !same {
		return err
	}
	cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (its own forward step did not end when cancelled: %v)", err, ctx.Err())
		case <-t.C:
			if vm.lock("step "+req.Kind) == nil {
				return nil
			}
		}
	}
}

// setForward records the forward step vm runs now: its operation, and how
// to cancel it.
func (vm *VM) setForward(op string, cancel context.CancelFunc) {
	vm.mu.Lock()
	vm.fwdOp, vm.fwdCancel = op, cancel
	vm.mu.Unlock()
}

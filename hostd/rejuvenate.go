package hostd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// RejuvenateOptions control a warm VMM restart.
type RejuvenateOptions struct {
	// QEMU is the binary of the new QEMU (the upgrade case); empty keeps
	// the VM's current one.
	QEMU    string `json:"qemu,omitempty"`
	NoGuest bool   `json:"no_guest,omitempty"`
	// Parallel bounds how many VMs of a host restart at once.
	Parallel int `json:"parallel,omitempty"`
}

// RejuvenateResult reports one VM's warm restart.
type RejuvenateResult struct {
	VM     string `json:"vm"`
	OldPID int    `json:"old_pid,omitempty"`
	NewPID int    `json:"new_pid,omitempty"`
	QEMU   string `json:"qemu,omitempty"`
	// Downtime is how long the vCPUs were stopped.
	Downtime   time.Duration `json:"downtime_ns"`
	Duration   time.Duration `json:"duration_ns"`
	StateBytes int64         `json:"state_bytes"`
	// Fallback is set when the new QEMU failed and the old binary took
	// the VM back.
	Fallback bool   `json:"fallback,omitempty"`
	Skipped  string `json:"skipped,omitempty"`
	Error    string `json:"error,omitempty"`
}

const fileWarmState = "warm.state"

// Rejuvenate restarts the VM's QEMU while its RAM stays in the shared
// memory file (warm-VM reboot): cooperation round, detach, stop, save only
// device state (x-ignore-shared), quit, start a new QEMU on the same
// memory, load, re-attach, resume, tell the guest. If the new QEMU cannot
// start, the old binary takes the VM back from the same state.
func (vm *VM) Rejuvenate(ctx context.Context, opts RejuvenateOptions) (res RejuvenateResult, err error) {
	res.VM = vm.name
	if err := vm.lock("rejuvenate"); err != nil {
		return res, err
	}
	defer vm.unlock()
	start := timeNow()
	defer func() { vm.h.metrics.observe("rejuvenate", resultLabel(err), start) }()
	spec := vm.Spec()
	if !spec.sharedMemory() {
		return res, fmt.Errorf("vm %q does not run on shared memory (shared_memory: false): use checkpoint and restore: %w", vm.name, ErrInvalidState)
	}
	if opts.QEMU != "" {
		if _, err := exec.LookPath(opts.QEMU); err != nil {
			return res, fmt.Errorf("qemu binary %q: %w", opts.QEMU, err)
		}
	}
	mon, err := vm.monitor()
	if err != nil {
		return res, err
	}
	st, err := mon.Status(ctx)
	if err != nil {
		return res, err
	}
	wasRunning := st.Running
	coop, err := vm.prepareGuest(ctx, "rejuvenate", opts.NoGuest)
	if err != nil {
		return res, err
	}
	outcome := "aborted"
	defer func() { coop.finish(context.WithoutCancel(ctx), outcome) }()
	if err := vm.detachAll(ctx); err != nil {
		return res, err
	}
	rollback := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		// The old QEMU must save RAM again in any later checkpoint.
		mon.MigrateSetCapabilities(rctx, map[string]bool{"x-ignore-shared": false})
		vm.attachAll(rctx)
		if wasRunning {
			mon.Cont(rctx)
		}
	}
	stopped := timeNow()
	if err := mon.Stop(ctx); err != nil {
		rollback()
		return res, err
	}
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
		rollback()
		return res, err
	}
	statePath := filepath.Join(vm.dir, fileWarmState)
	os.Remove(statePath)
	fd, err := saveState(ctx, mon, statePath, func(Progress) {})
	if err != nil {
		os.Remove(statePath)
		rollback()
		return res, fmt.Errorf("vm %q: save device state: %w", vm.name, err)
	}
	defer os.Remove(statePath)
	res.StateBytes = fd.Size

	// Past this point the old QEMU goes away; RAM stays in the file.
	vm.mu.Lock()
	exited := vm.exited
	res.OldPID = vm.rt.PID
	oldQEMU := vm.qemuBinary()
	absent := map[string]bool{}
	for _, id := range vm.rt.Detached {
		absent[id] = true
	}
	vm.mu.Unlock()
	coop.keep()
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	mon.Quit(qctx)
	cancel()
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		return res, fmt.Errorf("vm %q: old qemu pid %d did not quit", vm.name, res.OldPID)
	}
	newQEMU := oldQEMU
	if opts.QEMU != "" {
		newQEMU = opts.QEMU
	}
	err = vm.warmStart(ctx, newQEMU, absent, statePath)
	if err != nil && newQEMU != oldQEMU {
		vm.log.Error("new qemu failed; taking the vm back with the old binary", "qemu", newQEMU, "err", err)
		res.Fallback = true
		err = vm.warmStart(ctx, oldQEMU, absent, statePath)
	}
	if err != nil {
		// The RAM is still in the shared file and the device state in
		// statePath: keep both for the operator.
		os.Rename(statePath, statePath+".failed")
		return res, fmt.Errorf("vm %q: restart qemu (state kept in %s.failed, RAM in %s): %w",
			vm.name, statePath, vm.h.shmPath(vm.name), err)
	}
	mon, _ = vm.monitor()
	if err := vm.attachAll(ctx); err != nil {
		vm.log.Error("re-attach after rejuvenate", "err", err)
	}
	if wasRunning {
		if err := mon.Cont(ctx); err != nil {
			return res, err
		}
	}
	res.Downtime = timeNow().Sub(stopped)
	outcome = "rejuvenated"
	if !opts.NoGuest {
		vm.finishRound(ctx, outcome)
	}
	vm.mu.Lock()
	res.NewPID, res.QEMU = vm.rt.PID, vm.qemuBinary()
	vm.mu.Unlock()
	res.Duration = timeNow().Sub(start)
	vm.log.Info("rejuvenated", "old_pid", res.OldPID, "new_pid", res.NewPID, "qemu", res.QEMU,
		"downtime", res.Downtime, "state_bytes", res.StateBytes, "fallback", res.Fallback)
	return res, nil
}

// warmStart starts qemu on the VM's shared RAM and loads the device state.
func (vm *VM) warmStart(ctx context.Context, qemu string, absent map[string]bool, statePath string) error {
	vm.mu.Lock()
	prev := vm.rt.QEMU
	vm.rt.QEMU = qemu
	vm.mu.Unlock()
	fail := func(err error) error {
		vm.killProcess() // never the RAM file: it holds the guest
		vm.mu.Lock()
		vm.rt.QEMU = prev
		vm.saveRuntime()
		vm.mu.Unlock()
		return err
	}
	if err := vm.launch(ctx, launch{incoming: true, absent: absent}); err != nil {
		return fail(err)
	}
	mon, err := vm.monitor()
	if err != nil {
		return fail(err)
	}
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
		return fail(err)
	}
	if err := loadState(ctx, mon, statePath, func(Progress) {}); err != nil {
		return fail(err)
	}
	// Later checkpoints and migrations must carry RAM again.
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": false}); err != nil {
		return fail(err)
	}
	vm.mu.Lock()
	vm.rt.Incoming = false
	vm.saveRuntime()
	vm.mu.Unlock()
	return nil
}

// qemuBinary is the QEMU this VM runs with; callers hold vm.mu.
func (vm *VM) qemuBinary() string {
	if vm.rt.QEMU != "" {
		return vm.rt.QEMU
	}
	return vm.h.cfg.QEMU
}

// Rejuvenate warm-restarts every running VM of the host, at most
// opts.Parallel at once. VMs not on shared memory are skipped and said so.
func (h *Host) Rejuvenate(ctx context.Context, opts RejuvenateOptions) []RejuvenateResult {
	if opts.Parallel <= 0 {
		opts.Parallel = 1
	}
	var vms []*VM
	var out []RejuvenateResult
	for _, info := range h.List() {
		vm, err := h.Get(info.Name)
		if err != nil {
			continue
		}
		switch {
		case info.State != "running" && info.State != "paused":
			out = append(out, RejuvenateResult{VM: info.Name, Skipped: "not running (" + info.State + ")"})
		case !info.Spec.sharedMemory():
			out = append(out, RejuvenateResult{VM: info.Name, Skipped: "not on shared memory"})
		default:
			vms = append(vms, vm)
		}
	}
	var mu sync.Mutex
	sem := make(chan struct{}, opts.Parallel)
	var wg sync.WaitGroup
	for _, vm := range vms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res, err := vm.Rejuvenate(ctx, opts)
			if err != nil {
				res.Error = err.Error()
			}
			mu.Lock()
			out = append(out, res)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}

// StaleSharedMemory lists shared RAM files of this host that no running VM
// owns (left by a crash). They are reported, not removed: one may hold
// the only copy of a guest's memory.
func (h *Host) StaleSharedMemory() []string {
	matches, _ := filepath.Glob(filepath.Join(shmDir, "symvirt-"+h.tag+"-*.ram"))
	var stale []string
	for _, m := range matches {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(m), "symvirt-"+h.tag+"-"), ".ram")
		if vm, err := h.Get(name); err == nil && vm.alive() {
			continue
		}
		stale = append(stale, m)
	}
	return stale
}

package hostd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/qmp"
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

// Rejuvenate restarts the VM's QEMU while its RAM stays in the shared
// memory file (warm-VM reboot). The new QEMU starts first, on the same
// memory, while the old one still runs; then: cooperation round, detach,
// stop, stream only the device state (x-ignore-shared) from the old QEMU to
// the new one through a pipe, switch, re-attach, resume, tell the guest.
// The old QEMU quits only once the new one holds the state, so any failure
// resumes the old one: nothing is lost. A new binary that cannot start
// falls back to the current one.
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
	// Before the guest is asked or anything stops: the new QEMU would
	// take whatever file is at the path for the guest's memory.
	if err := vm.warmRAMUsable(); err != nil {
		return res, err
	}
	if opts.QEMU != "" {
		if err := vm.h.cfg.Policy.checkBinary(opts.QEMU, vm.h.cfg.QEMU); err != nil {
			return res, fmt.Errorf("vm %q: %w", vm.name, err)
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
	vm.mu.Lock()
	res.OldPID = vm.rt.PID
	oldQEMU, gen := vm.qemuBinary(), vm.rt.Gen+1
	oldExited := vm.exited
	absent := map[string]bool{}
	for _, id := range vm.rt.Detached {
		absent[id] = true
	}
	vm.mu.Unlock()
	rollback := func(why error) {
		vm.log.Warn("rejuvenate failed; the old qemu goes on", "err", why)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		// The old QEMU must save RAM again in any later checkpoint.
		mon.MigrateSetCapabilities(rctx, map[string]bool{"x-ignore-shared": false})
		vm.attachAll(rctx)
		if wasRunning {
			mon.Cont(rctx)
		}
	}

	newQEMU := oldQEMU
	if opts.QEMU != "" {
		newQEMU = opts.QEMU
	}
	l := launch{incoming: true, absent: absent, warm: true}
	p, err := vm.start(ctx, l, newQEMU, gen)
	if err != nil && newQEMU != oldQEMU && !errors.Is(err, ErrRAMFile) {
		vm.log.Error("new qemu failed to start; using the current binary", "qemu", newQEMU, "err", err)
		res.Fallback = true
		p, err = vm.start(ctx, l, oldQEMU, gen)
	}
	if err != nil {
		rollback(err)
		return res, err
	}
	if err := p.mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
		p.kill()
		rollback(err)
		return res, err
	}

	stopped := timeNow()
	n, err := warmTransfer(ctx, mon, p)
	if err != nil {
		p.kill()
		rollback(err)
		return res, fmt.Errorf("vm %q: device state to the new qemu: %w", vm.name, err)
	}
	res.StateBytes = n
	// Later checkpoints and migrations must carry RAM again.
	p.mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": false})

	// Switch: the new QEMU is the VM's; the old one quits in the
	// background (it is stopped and holds nothing the guest needs).
	coop.keep()
	vm.install(p, launch{absent: absent})
	go func() {
		qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		mon.Quit(qctx)
		select {
		case <-oldExited:
		case <-time.After(15 * time.Second):
			syscall.Kill(res.OldPID, syscall.SIGKILL)
		}
	}()
	if err := vm.attachAll(ctx); err != nil {
		vm.log.Error("re-attach after rejuvenate", "err", err)
	}
	if wasRunning {
		if err := p.mon.Cont(ctx); err != nil {
			return res, err
		}
	}
	res.Downtime = timeNow().Sub(stopped)
	outcome = "rejuvenated"
	if !opts.NoGuest {
		vm.finishRound(ctx, outcome)
	}
	res.NewPID, res.QEMU = p.pid, p.bin
	res.Duration = timeNow().Sub(start)
	vm.log.Info("rejuvenated", "old_pid", res.OldPID, "new_pid", res.NewPID, "qemu", res.QEMU,
		"downtime", res.Downtime, "state_bytes", res.StateBytes, "fallback", res.Fallback)
	return res, nil
}

// warmTransfer stops the old QEMU and streams its device state (RAM is
// skipped: x-ignore-shared) into the new one through a pipe.
func warmTransfer(ctx context.Context, old *qmp.Client, p *proc) (int64, error) {
	if err := old.Stop(ctx); err != nil {
		return 0, err
	}
	if err := old.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
		return 0, err
	}
	if err := old.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		return 0, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	err = p.mon.GetFD(ctx, "symvirt-warm-in", r)
	r.Close()
	if err == nil {
		err = old.GetFD(ctx, "symvirt-warm-out", w)
	}
	w.Close()
	if err != nil {
		return 0, err
	}
	if err := p.mon.MigrateIncoming(ctx, "fd:symvirt-warm-in"); err != nil {
		return 0, err
	}
	if err := old.Migrate(ctx, "fd:symvirt-warm-out"); err != nil {
		return 0, err
	}
	info, err := old.WaitMigration(ctx, 5*time.Millisecond, nil)
	if err != nil {
		old.MigrateCancel(context.WithoutCancel(ctx))
		return 0, err
	}
	if _, err := p.mon.WaitMigration(ctx, 5*time.Millisecond, nil); err != nil {
		return 0, err
	}
	return info.RAM.Transferred, nil
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

package hostd

import (
	"cmp"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd/qemu"
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
// memory file (warm-VM reboot), a one-VM operation of the coordinator's
// machine: cooperation round, detach, stop, replace (a new QEMU starts on
// the same memory and takes only the device state, x-ignore-shared, from
// the old one through a pipe), re-attach, resume, tell the guest. The old
// QEMU quits only once the new one holds the state, so a failure resumes
// the old one: nothing is lost. A new binary that cannot start falls back
// to the current one.
func (vm *VM) Rejuvenate(ctx context.Context, opts RejuvenateOptions) (res RejuvenateResult, err error) {
	res.VM = vm.name
	start := timeNow()
	defer func() { vm.h.metrics.observe("rejuvenate", resultLabel(err), start) }()
	if spec := vm.Spec(); !spec.UsesSharedMemory() {
		return res, fmt.Errorf("vm %q does not run on shared memory (shared_memory: false): use checkpoint and restore: %w", vm.name, ErrInvalidState)
	}
	// Before the guest is asked or anything stops: the new QEMU would
	// take whatever file is at the path for the guest's memory.
	f, err := vm.openWarmRAM()
	if err != nil {
		return res, err
	}
	f.Close()
	if opts.QEMU != "" {
		if err := vm.h.cfg.Policy.CheckBinary(opts.QEMU, vm.h.cfg.QEMU); err != nil {
			return res, fmt.Errorf("vm %q: %w", vm.name, err)
		}
	}
	vm.mu.Lock()
	res.OldPID = vm.rt.PID
	vm.mu.Unlock()
	d, acts, err := vm.h.newDirect(machine.KindRejuvenate, machine.VM{Name: vm.name}, vm.h.opOptions(""))
	if err != nil {
		return res, err
	}
	d.QEMU, d.NoGuest = opts.QEMU, opts.NoGuest
	if _, err := vm.h.runDirect(d, acts); err != nil {
		return res, err
	}
	vm.mu.Lock()
	res.NewPID, res.QEMU = vm.rt.PID, vm.qemuBinary()
	vm.mu.Unlock()
	res.Downtime, res.StateBytes, res.Fallback = d.resumed.Sub(d.stopped), d.bytes, d.note != ""
	res.Duration = timeNow().Sub(start)
	vm.log.Info("rejuvenated", "old_pid", res.OldPID, "new_pid", res.NewPID, "qemu", res.QEMU,
		"downtime", res.Downtime, "state_bytes", res.StateBytes, "fallback", res.Fallback)
	return res, nil
}

// replaceStep moves a stopped VM into a new QEMU on the same memory. On
// success the new QEMU holds it, paused, and the old one quits; on failure
// the old one still holds it, paused.
func (vm *VM) replaceStep(ctx context.Context, req StepRequest) (string, error) {
	old, err := vm.process()
	if err != nil {
		return "", err
	}
	ram, err := vm.openWarmRAM()
	if err != nil {
		return "", err
	}
	defer ram.Close()
	vm.mu.Lock()
	l := launch{absent: map[string]bool{}}
	for _, id := range vm.rt.Detached {
		l.absent[id] = true
	}
	a, oldQEMU := vm.args(launch{incoming: true, absent: l.absent}, vm.rt.Gen+1), vm.qemuBinary()
	vm.mu.Unlock()
	newQEMU, note := cmp.Or(req.Replace.QEMU, oldQEMU), ""
	p, err := qemu.Start(ctx, newQEMU, a, ram)
	if err != nil && newQEMU != oldQEMU {
		vm.log.Error("new qemu failed to start; using the current binary", "qemu", newQEMU, "err", err)
		note = fmt.Sprintf("new qemu %s failed to start (%v): the current binary took over", newQEMU, err)
		p, err = qemu.Start(ctx, oldQEMU, a, ram)
	}
	if err != nil {
		return "", fmt.Errorf("vm %q: %w", vm.name, err)
	}
	n, err := p.TakeOver(ctx, old)
	if err != nil {
		p.Kill()
		return "", fmt.Errorf("vm %q: device state to the new qemu: %w", vm.name, err)
	}
	vm.install(p, l)
	go old.Quit() // stopped, it holds nothing the guest needs
	if req.Replace.Transferred != nil {
		req.Replace.Transferred(n)
	}
	return note, nil
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
		case !info.Spec.UsesSharedMemory():
			out = append(out, RejuvenateResult{VM: info.Name, Skipped: "not on shared memory"})
		default:
			vms = append(vms, vm)
		}
	}
	done := make([]RejuvenateResult, len(vms))
	sem := make(chan struct{}, opts.Parallel)
	var wg sync.WaitGroup
	for i, vm := range vms {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res, err := vm.Rejuvenate(ctx, opts)
			if err != nil {
				res.Error = err.Error()
			}
			done[i] = res
		})
	}
	wg.Wait()
	out = append(out, done...)
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}

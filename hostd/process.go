package hostd

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/hostd/devices"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/qmp"
)

// launch says how to start a VM's QEMU.
type launch struct {
	incoming bool
	// absent: passthrough devices unplugged at the source of a migration
	// or checkpoint, plugged again once the state is loaded.
	absent map[string]bool
	// bornIn: the QEMU was started in another directory (runtime BornIn).
	bornIn string
	// pooledRAM: a new RAM file may come from the host's pool (a boot,
	// an incoming migration, a restore).
	pooledRAM bool
	// zeroRAM: set by launch, the QEMU waits for its state on a RAM file
	// that holds only zeros (new, or cleared by the pool).
	zeroRAM bool
}

// args is the command line of the VM's QEMU of generation gen; callers
// hold vm.mu.
func (vm *VM) args(l launch, gen int) qemu.Args {
	return qemu.Args{Spec: vm.spec, Dir: vm.dir, Accel: vm.h.cfg.Accel, Gen: gen, Incoming: l.incoming,
		Absent: l.absent, Override: vm.overrides(), RunAs: vm.h.cfg.QEMUUser, NamedRAM: vm.isClone()}
}

// qemuBinary is the QEMU this VM runs with; callers hold vm.mu.
func (vm *VM) qemuBinary() string { return cmp.Or(vm.rt.QEMU, vm.h.cfg.QEMU) }

// overrides are the pool properties of the VM's devices; callers hold vm.mu.
func (vm *VM) overrides() map[string]map[string]string {
	return devices.Pools(vm.h.cfg.Pools).Overrides(vm.rt.Slots)
}

// launch starts QEMU and makes it the VM's current one.
func (vm *VM) launch(ctx context.Context, l launch) error {
	vm.mu.Lock()
	bin, a := vm.qemuBinary(), vm.args(l, vm.rt.Gen)
	vm.mu.Unlock()
	ram, created, err := vm.openRAM(a.Spec, l.pooledRAM)
	if err != nil {
		return err
	}
	defer ram.Close()
	p, err := qemu.Start(ctx, bin, a, ram)
	if err != nil {
		if created {
			vm.removeRAM()
		}
		return fmt.Errorf("vm %q: %w", vm.name, err)
	}
	l.zeroRAM = created && l.incoming
	vm.install(p, l)
	return nil
}

// install makes p the VM's current QEMU.
func (vm *VM) install(p *qemu.Process, l launch) {
	vm.mu.Lock()
	vm.proc = p
	vm.rt.PID, vm.rt.StartedAt, vm.rt.Incoming, vm.rt.Gen = p.PID, time.Now().UTC(), l.incoming, p.Gen
	vm.rt.QEMU, vm.rt.BornIn = p.Bin, l.bornIn
	vm.zeroRAM = l.zeroRAM
	if p.Bin == vm.h.cfg.QEMU {
		vm.rt.QEMU = ""
	}
	vm.rt.Detached = slices.Sorted(maps.Keys(l.absent))
	vm.saveRuntime()
	vm.mu.Unlock()
	go vm.watch(p)
	vm.log.Info("qemu started", "pid", p.PID, "incoming", l.incoming, "qemu", p.Bin, "gen", p.Gen)
}

// watch notices a QEMU of the VM going away. When it was the current one,
// nothing runs the guest on its RAM file again (a warm restart's new QEMU
// is current before the old one quits), so the file goes: now, or when
// the operation running on the VM ends (unlock), unless it started a new
// QEMU.
func (vm *VM) watch(p *qemu.Process) {
	afterExit := vm.watchClone(p)
	vm.log.Info("qemu exited", "pid", p.PID, "status", p.ExitErr())
	vm.mu.Lock()
	current := vm.rt.PID == p.PID
	if current {
		// Incoming stays: a copy whose QEMU died before it ran here is
		// still one its source (or the operation) may discard.
		vm.rt.PID, vm.ramOrphan = 0, true
		vm.saveRuntime()
	}
	if vm.proc == p {
		vm.proc = nil
	}
	vm.mu.Unlock()
	if current && vm.op.TryLock() {
		vm.reclaimRAM()
		vm.op.Unlock()
	}
	if current {
		afterExit()
	}
}

// reclaimRAM removes the RAM file that watch found orphaned if no QEMU of
// the VM runs; callers hold vm.op.
func (vm *VM) reclaimRAM() {
	vm.mu.Lock()
	orphan := vm.ramOrphan && !qemu.Alive(vm.rt.PID)
	vm.ramOrphan = false
	vm.mu.Unlock()
	if orphan {
		vm.removeRAM()
	}
}

// adopt reconnects to a QEMU left running by an earlier hostd.
func (vm *VM) adopt() error {
	vm.loseStream()
	vm.mu.Lock()
	pid, gen, ram, born := vm.rt.PID, vm.rt.Gen, vm.rt.RAM, cmp.Or(vm.rt.BornIn, vm.dir)
	vm.mu.Unlock()
	if !qemu.Owns(born, pid, gen) {
		if pid != 0 {
			vm.log.Info("qemu is gone; vm is stopped", "pid", pid)
		}
		vm.cleanupAfterStop()
		return nil
	}
	if d := ram.Replaced(); d != "" {
		vm.log.Error("guest RAM file replaced while the VM ran: the running qemu keeps its own RAM; warm restart and restart refuse the file", "err", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := qemu.Adopt(ctx, vm.dir, pid, gen, ram)
	if err != nil {
		return fmt.Errorf("vm %q: %w", vm.name, err)
	}
	vm.mu.Lock()
	vm.proc = p
	vm.mu.Unlock()
	go vm.watch(p)
	vm.log.Info("re-adopted running qemu", "pid", pid)
	if err := qemu.ResetScheduling(pid); err != nil {
		vm.log.Warn("qemu's threads keep the scheduling an earlier hostd gave them", "err", err)
	}
	vm.settleLive(p.Mon)
	vm.settleLostHold(p.Mon)
	return nil
}

// process is the VM's current QEMU, its monitor still open.
func (vm *VM) process() (*qemu.Process, error) {
	vm.mu.Lock()
	p := vm.proc
	vm.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("vm %q is not running: %w", vm.name, ErrInvalidState)
	}
	select {
	case <-p.Mon.Done():
		return nil, fmt.Errorf("vm %q: monitor closed: %w", vm.name, ErrInvalidState)
	default:
		return p, nil
	}
}

func (vm *VM) monitor() (*qmp.Client, error) {
	p, err := vm.process()
	if err != nil {
		return nil, err
	}
	return p.Mon, nil
}

// exited is closed when the VM's current QEMU is gone (nil: none).
func (vm *VM) exited() <-chan struct{} {
	if p, err := vm.process(); err == nil {
		return p.Exited()
	}
	return nil
}

func (vm *VM) alive() bool {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return qemu.Alive(vm.rt.PID)
}

// locked runs do under the VM's operation lock, as op.
func (vm *VM) locked(op string, do func() error) error {
	if err := vm.lock(op); err != nil {
		return err
	}
	defer vm.unlock()
	return do()
}

// Start boots a stopped VM.
func (vm *VM) Start(ctx context.Context) error {
	return vm.locked("start", func() error {
		if vm.alive() {
			return fmt.Errorf("vm %q is already running: %w", vm.name, ErrInvalidState)
		}
		return vm.boot(ctx)
	})
}

// boot starts the VM's QEMU from its spec and runs it; callers hold vm.op.
func (vm *VM) boot(ctx context.Context) error {
	if err := vm.allocateSlots(nil); err != nil {
		return err
	}
	if err := vm.launch(ctx, launch{pooledRAM: true}); err != nil {
		return err
	}
	vm.populateAfterStart()
	return vm.vcpus(ctx, (*qmp.Client).Cont)
}

// Stop shuts the VM down: ACPI power-down first, then quit, then SIGKILL.
// A timeout of 0 is the host's StopTimeout.
func (vm *VM) Stop(ctx context.Context, timeout time.Duration) error {
	return vm.locked("stop", func() error {
		vm.noteStop() // a clone whose guest rebooted stays stopped
		p, err := vm.process()
		if err != nil || !vm.alive() {
			vm.kill() // not running, or not adopted
			return nil
		}
		if err := p.Stop(ctx, cmp.Or(timeout, vm.h.cfg.StopTimeout)); err != nil {
			return fmt.Errorf("vm %q: %w", vm.name, err)
		}
		vm.cleanupAfterStop()
		return nil
	})
}

// kill ends QEMU at once (a destination that must not run, a failed start).
func (vm *VM) kill() {
	vm.mu.Lock()
	p, pid := vm.proc, vm.rt.PID
	vm.mu.Unlock()
	if p != nil {
		p.Kill()
	} else if qemu.Alive(pid) { // not adopted
		syscall.Kill(pid, syscall.SIGKILL)
	}
	vm.cleanupAfterStop()
}

// cleanupAfterStop forgets a QEMU that is gone, and its RAM file.
func (vm *VM) cleanupAfterStop() {
	vm.mu.Lock()
	vm.rt.PID, vm.rt.Incoming, vm.rt.Detached = 0, false, nil
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.removeRAM()
}

// Pause stops the vCPUs.
func (vm *VM) Pause(ctx context.Context) error {
	return vm.locked("pause", func() error { return vm.vcpus(ctx, (*qmp.Client).Stop) })
}

// Resume continues the vCPUs.
func (vm *VM) Resume(ctx context.Context) error {
	return vm.locked("resume", func() error { return vm.vcpus(ctx, (*qmp.Client).Cont) })
}

func (vm *VM) vcpus(ctx context.Context, do func(*qmp.Client, context.Context) error) error {
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	return do(mon, ctx)
}

package hostd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/atomicfile"
)

// A clone's guest that reboots runs what its QEMU was started with: a
// clone QEMU started lean (template_lean.go) has the placeholder kernel,
// which powers the machine off, so its QEMU exits. hostd tells that exit
// from a power-off the guest or an operator meant by the QMP events that
// led to it: a RESET, then no host power-down request (POWERDOWN) and no
// SHUTDOWN but the placeholder's (reason guest-shutdown). The SHUTDOWN is
// not required: QEMU exits right after it, and its monitor may close
// before hostd read it; the RESET comes well before, the firmware running
// first. hostd then boots the VM again from its spec (the real kernel and
// initrd, the clone's disks, NICs and MACs): a cold boot, as a reboot is,
// the guest's RAM not kept. A guest that booted anew no longer has the
// clone's identity, only the template's kernel command line; guestd is
// given the clone's again (the same hostname, machine-id, MACs and
// addresses, new entropy) once it is up, after this boot and after every
// later guest reset of the clone's QEMU, which then runs the real kernel.

// fileCloneIdentity holds, in a clone's directory, the identity guestd
// was given, for guestd again after the guest reboots.
const fileCloneIdentity = "clone-identity.json"

// cloneBootTimeout bounds a rebooted clone's boot up to guestd taking its
// identity back: a cold boot, longer than a cooperation round.
const cloneBootTimeout = 3 * time.Minute

// cloneReboot is a VM's state for its clone's guest rebooting into the
// placeholder; vm.mu guards it.
type cloneReboot struct {
	// stops counts the stops asked of the VM. The QEMU whose guest
	// rebooted is booted again only if none came since it started: a
	// stop between its exit and the reboot taking the VM's lock keeps
	// the clone stopped.
	stops uint64
	// hook, set by tests, runs as a reboot passes a stage: "decided"
	// once hostd knows the guest rebooted into the placeholder, before it
	// waits for the VM's lock; "done" once it booted the VM or gave up.
	hook func(stage string)
}

// noteStop records a stop asked of the VM, which no reboot of a QEMU
// started before it may undo.
func (vm *VM) noteStop() {
	vm.mu.Lock()
	vm.reboot.stops++
	vm.mu.Unlock()
}

// stopsSoFar is how many stops were asked of the VM.
func (vm *VM) stopsSoFar() uint64 {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.reboot.stops
}

// rebootStage runs the test hook, if any, for a stage of a reboot.
func (vm *VM) rebootStage(stage string) {
	vm.mu.Lock()
	hook := vm.reboot.hook
	vm.mu.Unlock()
	if hook != nil {
		hook(stage)
	}
}

// saveCloneIdentity records c (without its seed, which is used once) as
// the VM's clone identity.
func (vm *VM) saveCloneIdentity(c guestproto.Clone) error {
	c.Seed, c.Standby = "", false
	data, err := json.Marshal(c)
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(vm.dir, fileCloneIdentity), data, 0o600)
	}
	if err != nil {
		return fmt.Errorf("vm %q: record the clone's identity: %w", vm.name, err)
	}
	return nil
}

// cloneIdentity is the identity the VM was given as a clone, for a guest
// that booted again: the NICs already have the clone's MACs (the spec's),
// and a new seed. ok is false for a VM that is not a clone.
func (vm *VM) cloneIdentity() (c guestproto.Clone, ok bool) {
	c, ok, err := vm.savedCloneIdentity()
	if !ok {
		if err != nil {
			vm.log.Error("clone's identity unreadable: its guest will not take it back", "err", err)
		}
		return c, false
	}
	fresh := newCloneIdentity(c.Hostname, c.NICs)
	c.Seed = fresh.Seed
	for i := range c.NICs {
		c.NICs[i].OldMAC = c.NICs[i].MAC
	}
	return c, true
}

// isLeanClone reports whether the QEMU pid runs the clones' placeholder
// kernel (its command line names it).
func isLeanClone(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte("/"+placeholderKernelName+"\x00"))
}

// watchClone follows a clone's QEMU p for guest resets, from p's start
// (watch's). It returns what watch calls once p exited as the VM's
// current QEMU: it boots the VM again if the guest rebooted into the
// placeholder (for a QEMU that is not a lean clone's: never) and no stop
// was asked since p started. A guest that reset in a QEMU running the
// real kernel gets its identity back at once.
func (vm *VM) watchClone(p *qemu.Process) (afterExit func()) {
	if _, ok := vm.cloneIdentity(); !ok || p.Mon == nil {
		return func() {}
	}
	stops := vm.stopsSoFar()
	lean := isLeanClone(p.PID)
	events, cancel := p.Mon.Subscribe("RESET", "POWERDOWN", "SHUTDOWN")
	done := make(chan bool, 1)
	go func() {
		defer cancel()
		reset := false
		for ev := range events { // closed once QEMU's monitor is gone
			switch ev.Event {
			case "RESET":
				reset = true
				if !lean {
					go vm.restoreCloneIdentity(p)
				}
			case "POWERDOWN": // an operator's stop: the power-off is meant
				reset = false
			case "SHUTDOWN":
				reason, _ := ev.Data["reason"].(string)
				reset = reset && reason == "guest-shutdown"
			}
		}
		done <- lean && reset
	}()
	return func() {
		if <-done {
			vm.rebootClone(p, stops)
		}
	}
}

// rebootClone boots the VM again from its spec after its guest rebooted
// into the placeholder kernel (p's), unless the VM was stopped since p
// started (stops: the count then), or started or removed meanwhile; then
// guestd gets the clone's identity back. It waits for an operation under
// way on the VM to end, within the boot's deadline.
func (vm *VM) rebootClone(p *qemu.Process, stops uint64) {
	vm.log.Info("clone's guest rebooted; booting it from its spec", "pid", p.PID)
	vm.rebootStage("decided")
	defer vm.rebootStage("done")
	ctx, cancel := context.WithTimeout(context.Background(), cloneBootTimeout)
	defer cancel()
	booted := false
	err := vm.lockedWait(ctx, "reboot", func() error {
		if vm.stopsSoFar() != stops {
			vm.log.Info("clone's guest rebooted, but the VM was stopped since: it stays stopped")
			return nil
		}
		if vm.alive() {
			return nil
		}
		if cur, err := vm.h.Get(vm.name); err != nil || cur != vm {
			return nil
		}
		booted = true
		return vm.boot(ctx)
	})
	if err != nil {
		vm.log.Error("clone's guest rebooted; booting it again failed: the VM is stopped", "err", err)
		return
	}
	if booted {
		vm.restoreCloneIdentity(vm.currentProcess())
	}
}

// restoreCloneIdentity gives guestd, in a guest of the clone that booted
// anew (QEMU p's), the clone's identity once it is up. It gives up when
// p exits.
func (vm *VM) restoreCloneIdentity(p *qemu.Process) {
	c, ok := vm.cloneIdentity()
	if !ok || p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cloneBootTimeout)
	defer cancel()
	go func() {
		select {
		case <-p.Exited():
		case <-ctx.Done():
		}
		cancel()
	}()
	host, _, err := vm.connectGuest(ctx)
	if err == nil {
		err = host.Clone(ctx, newRoundID(), c)
		host.Close()
	}
	if err != nil {
		vm.log.Error("clone's guest booted again; it did not take the clone's identity back", "err", fmt.Errorf("%w: %w", ErrGuest, err))
		return
	}
	vm.log.Info("clone's guest booted again and took the clone's identity back", "hostname", c.Hostname)
}

// currentProcess is the VM's current QEMU, nil if none.
func (vm *VM) currentProcess() *qemu.Process {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.proc
}

package hostd

import (
	"context"
	"log/slog"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// A VM whose coordinator's lease ran out is released: hostd runs a
// one-VM release operation of the machine (machine.KindRelease) as a
// direct operation, journaled in STATE_DIR/ops and finished by the next
// hostd if this one dies. hostd only says what it finds on the VM; what to
// undo, and in which order, is the machine's.

// release undoes on vm what the operation of lease l left, once no step
// holds the VM any more (one of the gone coordinator's may still run: its
// lease ran out, not its step). The lease is forgotten (persisted) only
// once the release is journaled: a hostd that dies first finds the lease
// again and releases the VM then.
func (h *Host) release(vm *VM, l *lease) {
	log := vm.log.With("op", l.Op, "dest", l.Dest)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for vm.busy() {
		select {
		case <-ctx.Done():
			log.Error("lease expired but the vm stayed busy: not released")
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	vm.mu.Lock()
	found := machine.VM{Name: vm.name, Incoming: vm.rt.Incoming}
	vm.mu.Unlock()
	if !found.Incoming {
		found.Dest = l.Dest // a migration source: its destination holds a paused copy
	}
	d, acts, err := h.newDirect(machine.KindRelease, found, h.opOptions(""))
	if err == nil {
		d.To = l.Dest
		err = h.journalDirect(d)
	}
	if err != nil {
		log.Error("lease expired but the vm cannot be released", "err", err)
		return
	}
	h.updateRuntime(vm.name, func(rt *runtimeState) {
		if rt.Lease != nil && rt.Lease.Op == l.Op {
			rt.Lease = nil
		}
	})
	log.Warn("coordinator lease expired: releasing the vm", "release", d.Op.ID, "incoming", found.Incoming)
	res, err := h.runDirect(d, acts)
	vr, lvl := res.VMs[0], slog.LevelInfo
	if !res.Done || vr.Outcome == machine.OutcomeStranded {
		lvl = slog.LevelError // stopped, or left for an operator
	}
	if res.Done {
		err = nil // a direct operation's verdict; the outcome says it here
	}
	log.Log(ctx, lvl, "vm released", "release", d.Op.ID, "done", res.Done, "outcome", vr.Outcome, "error", vr.Error, "err", err)
}

// busy reports whether an operation or a step holds the VM.
func (vm *VM) busy() bool {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.operation != ""
}

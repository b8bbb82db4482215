package hostd

import (
	"context"
	"fmt"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// The network fence makes a job's live checkpoint consistent without
// keeping every VM paused until the slowest has reached its snapshot
// point. A cut is inconsistent only if a message leaves a VM after its
// snapshot point and reaches a VM before that one's. So each VM is fenced
// by its snapshot point at the latest, before its vCPUs run again: hostd
// holds every packet the VM sends or receives in a QEMU filter-buffer on
// each of its netdevs (the passthrough devices are already gone), and the
// fences lift in the resume phase, after the last snapshot point. A message sent after
// its sender's point is held until every point is taken; what a VM sent
// before its point is in its past, wherever it lands; held packets are
// lost in flight for the checkpoint, which TCP retransmits after a
// restart.
//
// While fenced a VM is off the network for every peer, in the job or not,
// so the fence goes up as late as the cut allows: the job's fence step
// only arms it (the filters are added off, which also tells whether this
// VM can be fenced at all: one that cannot is stopped for the cut
// instead, and saved stop-and-save, so that it stays stopped until the
// resume), and the VM's own point step turns it on, right before its
// point. With live_mode precopy that is the stop at the end of its copy
// (live.go): QEMU holds it stopped until hostd runs it, and hostd fences
// it in between, so the fence does not cover the copy. With live_mode
// snapshot QEMU takes the point and runs the VM again by itself, so the
// fence goes on right before hostd asks for the point, once this
// machine's snapshot lock is taken (a VM waiting for another's point is
// not fenced). A VM with disks is fenced there too, then stopped for the
// cut of its disks (QEMU runs it again at its point).
//
// A held packet is in no VM's saved state, and a filter's release timer
// runs on the guest's virtual clock, so an interval of an hour never
// fires in practice: lifting the fence (object-del) is what releases them.

const fenceInterval = uint32(3600 * 1000 * 1000) // µs

func fenceID(nic string) string { return "symvirt-fence-" + nic }

func fenceFilter(nic, status string) map[string]any {
	return map[string]any{"qom-type": "filter-buffer", "id": fenceID(nic), "netdev": "nd-" + nic,
		"queue": "all", "interval": fenceInterval, "status": status}
}

// fencedNICs are the VM's NICs a fence holds: the passthrough ones are
// detached before the cut.
func (vm *VM) fencedNICs() []string {
	var ids []string
	for _, n := range vm.Spec().NICs {
		if !n.Passthrough {
			ids = append(ids, n.ID)
		}
	}
	return ids
}

// armFence adds the fence's filters, off: traffic flows until fence. On
// failure none is left.
func (vm *VM) armFence(ctx context.Context, mon *qmp.Client) error {
	var done []string
	for _, id := range vm.fencedNICs() {
		err := mon.Execute(ctx, "object-add", fenceFilter(id, "off"), nil)
		if err != nil && !fenceThere(ctx, mon, id) {
			vm.unfenceIDs(context.WithoutCancel(ctx), mon, done)
			return fmt.Errorf("vm %q: network fence on %q: %w", vm.name, id, err)
		}
		done = append(done, id)
	}
	vm.log.Info("network fence armed", "nics", done)
	return nil
}

// fenceThere: nic's fence filter exists already (a repeated arm).
func fenceThere(ctx context.Context, mon *qmp.Client, nic string) bool {
	var status string
	return mon.Execute(ctx, "qom-get", map[string]any{"path": "/objects/" + fenceID(nic), "property": "status"}, &status) == nil
}

// fence holds the VM's network traffic: it turns the armed filters on, or
// adds them on where they are not (hostd restarted since the arm). On
// failure nothing stays fenced.
func (vm *VM) fence(ctx context.Context, mon *qmp.Client) error {
	vm.mu.Lock()
	held := vm.hold != nil
	vm.mu.Unlock()
	if held {
		return nil // the job's fence holds only its peers' frames (peerhold.go)
	}
	start := timeNow()
	var done []string
	for _, id := range vm.fencedNICs() {
		err := mon.Execute(ctx, "qom-set", map[string]any{"path": "/objects/" + fenceID(id), "property": "status", "value": "on"}, nil)
		if err != nil {
			err = mon.Execute(ctx, "object-add", fenceFilter(id, "on"), nil)
		}
		if err != nil {
			vm.unfenceIDs(context.WithoutCancel(ctx), mon, done)
			return fmt.Errorf("vm %q: network fence on %q: %w", vm.name, id, err)
		}
		done = append(done, id)
	}
	vm.mu.Lock()
	vm.fencedAt = start
	vm.mu.Unlock()
	// at: every packet is held from then on (the cut's tests order it
	// against the VM's point).
	end := timeNow()
	vm.log.Info("network fenced", "nics", done, "took", end.Sub(start), "at", end)
	return nil
}

// unfence releases what the fence held; it is harmless on a VM that is not
// fenced (hostd may have restarted since it fenced it).
func (vm *VM) unfence(ctx context.Context) {
	vm.dropHold(ctx)
	mon, err := vm.monitor()
	if err != nil {
		return
	}
	begin := timeNow()
	if vm.unfenceIDs(ctx, mon, vm.fencedNICs()) {
		vm.mu.Lock()
		at := vm.fencedAt
		vm.fencedAt = time.Time{}
		vm.mu.Unlock()
		if !at.IsZero() {
			held := timeNow().Sub(at)
			vm.h.metrics.fence.Observe(held.Seconds())
			vm.log.Info("network fence lifted", "held_ns", held.Nanoseconds(), "from", begin)
		}
	}
}

// unfenceIDs removes the fences of nics; it reports whether any was there.
func (vm *VM) unfenceIDs(ctx context.Context, mon *qmp.Client, nics []string) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lifted := false
	for _, id := range nics {
		if err := mon.Execute(ctx, "object-del", map[string]any{"id": fenceID(id)}, nil); err == nil {
			lifted = true
		}
	}
	return lifted
}

// liftFenceFirst lifts the fence of a VM the resume step resumes before
// anything else the step does: its persisting (each fsync waits behind
// the streams' writeback), the VM's step lock. Every VM of a job waits on
// the slowest lift, and a resume comes only once the job's last point is
// taken (or its cut abandoned), so the lift is due as soon as it arrives.
// A point step still fencing this VM (an abandoned cut) ends before the
// resume step runs, whose own unfence then lifts what it put up.
func (h *Host) liftFenceFirst(ctx context.Context, req StepRequest) {
	if req.Kind != StepResume || oldFenceLift {
		return
	}
	vm, err := h.Get(req.VM)
	if err != nil {
		return
	}
	vm.mu.Lock()
	fenced := !vm.fencedAt.IsZero()
	vm.mu.Unlock()
	if fenced {
		vm.unfence(ctx)
	}
}

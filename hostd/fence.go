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
// With live_mode precopy a running VM's snapshot point is the stop at
// the end of its copy (live.go): QEMU holds it stopped until hostd runs
// it, and hostd fences it in between, so the fence does not cover the
// copy. With live_mode snapshot QEMU takes the point and runs the VM again
// by itself, so every running VM is fenced at the job's STOP barrier,
// before any point. A VM with disks is stopped and fenced at the barrier
// (QEMU runs it again at its point).
//
// A held packet is in no VM's saved state, and a filter's release timer
// runs on the guest's virtual clock, so an interval of an hour never
// fires in practice: lifting the fence (object-del) is what releases them.

const fenceInterval = uint32(3600 * 1000 * 1000) // µs

func fenceID(nic string) string { return "symvirt-fence-" + nic }

// fence holds the VM's network traffic. On failure nothing stays fenced.
func (vm *VM) fence(ctx context.Context, mon *qmp.Client) error {
	start := timeNow()
	var done []string
	for _, n := range vm.Spec().NICs {
		if n.Passthrough {
			continue // detached before the cut
		}
		err := mon.Execute(ctx, "object-add", map[string]any{"qom-type": "filter-buffer", "id": fenceID(n.ID),
			"netdev": "nd-" + n.ID, "queue": "all", "interval": fenceInterval}, nil)
		if err != nil {
			vm.unfenceIDs(context.WithoutCancel(ctx), mon, done)
			return fmt.Errorf("vm %q: network fence on %q: %w", vm.name, n.ID, err)
		}
		done = append(done, n.ID)
	}
	vm.mu.Lock()
	vm.fencedAt = start
	vm.mu.Unlock()
	vm.log.Info("network fenced", "nics", done, "took", timeNow().Sub(start))
	return nil
}

// unfence releases what the fence held; it is harmless on a VM that is not
// fenced (hostd may have restarted since it fenced it).
func (vm *VM) unfence(ctx context.Context) {
	mon, err := vm.monitor()
	if err != nil {
		return
	}
	var ids []string
	for _, n := range vm.Spec().NICs {
		if !n.Passthrough {
			ids = append(ids, n.ID)
		}
	}
	if vm.unfenceIDs(ctx, mon, ids) {
		vm.mu.Lock()
		at := vm.fencedAt
		vm.fencedAt = time.Time{}
		vm.mu.Unlock()
		if !at.IsZero() {
			held := timeNow().Sub(at)
			vm.h.metrics.fence.Observe(held.Seconds())
			vm.log.Info("network fence lifted", "held_ns", held.Nanoseconds())
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

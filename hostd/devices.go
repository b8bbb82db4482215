package hostd

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/symvirt/symvirt/hostd/devices"
	"github.com/symvirt/symvirt/qmp"
)

// allocateSlots gives every pooled passthrough device of the VM (of only,
// when not nil) a free entry of this host's pool, keeping one it has.
func (vm *VM) allocateSlots(only []string) error {
	h := vm.h
	// Pool use is host-wide: hold the host lock while choosing.
	h.mu.Lock()
	defer h.mu.Unlock()
	used := map[devices.Slot]bool{}
	for _, other := range h.vms {
		if other != vm {
			other.mu.Lock()
			for _, s := range other.rt.Slots {
				used[s] = true
			}
			other.mu.Unlock()
		}
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.rt.Slots == nil {
		vm.rt.Slots = map[string]devices.Slot{}
	}
	if err := devices.Pools(h.cfg.Pools).Allocate(&vm.spec, vm.rt.Slots, used, only); err != nil {
		return fmt.Errorf("vm %q: %w", vm.name, err)
	}
	vm.saveRuntime()
	return nil
}

// Detach hot-unplugs one passthrough device and waits until it has left
// QEMU's device tree (the guest must acknowledge the unplug), bounded by
// DetachTimeout; QEMU finalizes it later (qmp.DeviceDel).
func (vm *VM) Detach(ctx context.Context, id string) error {
	return vm.locked("detach", func() error { return vm.detach(ctx, id) })
}

// Attach hot-plugs a detached passthrough device again.
func (vm *VM) Attach(ctx context.Context, id string) error {
	return vm.locked("attach", func() error { return vm.attach(ctx, id) })
}

// passthrough is the VM's passthrough device id, whether it is detached
// now, and the monitor to plug it with.
func (vm *VM) passthrough(id string) (*qmp.Client, devices.Device, bool, error) {
	mon, err := vm.monitor()
	if err != nil {
		return nil, devices.Device{}, false, err
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	dev, ok := devices.Passthrough(&vm.spec, id, vm.overrides()[id])
	if !ok {
		return nil, dev, false, fmt.Errorf("vm %q: device %q is not a passthrough device of this vm: %w", vm.name, id, ErrNotFound)
	}
	return mon, dev, slices.Contains(vm.rt.Detached, id), nil
}

func (vm *VM) detach(ctx context.Context, id string) error {
	mon, _, detached, err := vm.passthrough(id)
	if err != nil || detached {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, vm.h.cfg.DetachTimeout)
	defer cancel()
	return vm.hotplug("detach", id, func() error { return mon.DeviceDel(ctx, id) })
}

func (vm *VM) attach(ctx context.Context, id string) error {
	// A re-attach deferred to a live stream's end may meet a step's.
	vm.attachMu.Lock()
	defer vm.attachMu.Unlock()
	mon, dev, detached, err := vm.passthrough(id)
	if err != nil || !detached {
		return err
	}
	return vm.hotplug("attach", id, func() error { return dev.Plug(ctx, mon) })
}

// hotplug runs a detach or attach of device id and records it.
func (vm *VM) hotplug(op, id string, do func() error) error {
	start := timeNow()
	if err := do(); err != nil {
		return fmt.Errorf("vm %q: %s %q: %w", vm.name, op, id, err)
	}
	vm.h.metrics.observe(op, "ok", start)
	vm.mu.Lock()
	vm.rt.Detached = slices.DeleteFunc(vm.rt.Detached, func(s string) bool { return s == id })
	if op == "detach" {
		vm.rt.Detached = append(vm.rt.Detached, id)
	}
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.log.Info("device "+op+"ed", "device", id, "took", timeNow().Sub(start))
	return nil
}

// detachAll unplugs every passthrough device; on failure it re-attaches
// what it unplugged, so the VM is left as it was.
func (vm *VM) detachAll(ctx context.Context) error {
	var done []string
	for _, id := range vm.spec.PassthroughIDs() {
		if err := vm.detach(ctx, id); err != nil {
			for _, d := range done {
				if aerr := vm.attach(context.WithoutCancel(ctx), d); aerr != nil {
					vm.log.Error("re-attach after failed detach", "device", d, "err", aerr)
				}
			}
			return err
		}
		done = append(done, id)
	}
	return nil
}

// attachAll plugs every detached passthrough device back; it tries them all
// and returns the first error.
func (vm *VM) attachAll(ctx context.Context) error {
	vm.mu.Lock()
	ids := slices.Clone(vm.rt.Detached)
	ls := vm.live
	later := false
	if ls != nil && len(ids) > 0 {
		select {
		case <-ls.done:
		default:
			// QEMU refuses device_add while a live checkpoint streams. The
			// guest runs on (its bond on the other NIC) and the devices
			// come back when the stream ends; nothing waits for that.
			later = !ls.reattach
			ls.reattach = true
			if !later {
				vm.mu.Unlock()
				return nil // already scheduled
			}
		}
	}
	vm.mu.Unlock()
	if later {
		vm.log.Info("devices return when the live checkpoint's stream ends", "devices", ids)
		go func() {
			<-ls.done
			actx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := vm.attachAll(actx); err != nil {
				vm.log.Error("attach after live checkpoint", "err", err)
			}
		}()
		return nil
	}
	var first error
	for _, id := range ids {
		if err := vm.attach(ctx, id); err != nil {
			vm.log.Error("attach", "device", id, "err", err)
			first = cmp.Or(first, err)
		}
	}
	return first
}

package hostd

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// overrides returns the pool properties of every device with a slot;
// callers hold vm.mu.
func (vm *VM) overrides() map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, s := range vm.rt.Slots {
		if entries := vm.h.cfg.Pools[s.Pool]; s.Index < len(entries) {
			out[id] = entries[s.Index]
		}
	}
	return out
}

// allocateSlots gives every pooled passthrough device of the VM a free entry
// of this host's pool (keeping one it already has). keep, when set, limits
// allocation to those ids.
func (vm *VM) allocateSlots(only []string) error {
	h := vm.h
	// Pool use is host-wide: hold the host lock while choosing.
	h.mu.Lock()
	defer h.mu.Unlock()
	used := map[poolSlot]string{}
	for _, other := range h.vms {
		if other == vm {
			continue
		}
		other.mu.Lock()
		for id, s := range other.rt.Slots {
			used[s] = other.name + "/" + id
		}
		other.mu.Unlock()
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.rt.Slots == nil {
		vm.rt.Slots = map[string]poolSlot{}
	}
	for _, id := range vm.spec.PassthroughIDs() {
		pool := vm.spec.PoolOf(id)
		if pool == "" || (only != nil && !slices.Contains(only, id)) {
			continue
		}
		if s, ok := vm.rt.Slots[id]; ok && s.Pool == pool && s.Index < len(h.cfg.Pools[pool]) {
			continue
		}
		found := false
		for i := range h.cfg.Pools[pool] {
			s := poolSlot{Pool: pool, Index: i}
			if _, taken := used[s]; !taken {
				vm.rt.Slots[id] = s
				used[s] = vm.name + "/" + id
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("vm %q device %q: pool %q has %d entries, all in use: %w",
				vm.name, id, pool, len(h.cfg.Pools[pool]), ErrNoDevice)
		}
	}
	vm.saveRuntime()
	return nil
}

// Detach hot-unplugs one passthrough device and waits until QEMU reports it
// gone (the guest must acknowledge the unplug), bounded by DetachTimeout.
func (vm *VM) Detach(ctx context.Context, id string) error {
	if err := vm.lock("detach"); err != nil {
		return err
	}
	defer vm.unlock()
	return vm.detach(ctx, id)
}

// Attach hot-plugs a detached passthrough device again.
func (vm *VM) Attach(ctx context.Context, id string) error {
	if err := vm.lock("attach"); err != nil {
		return err
	}
	defer vm.unlock()
	return vm.attach(ctx, id)
}

func (vm *VM) detach(ctx context.Context, id string) error {
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	vm.mu.Lock()
	_, pt := findDevice(&vm.spec, id, nil)
	already := slices.Contains(vm.rt.Detached, id)
	vm.mu.Unlock()
	if !pt {
		return fmt.Errorf("vm %q: device %q is not a passthrough device of this vm: %w", vm.name, id, ErrNotFound)
	}
	if already {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, vm.h.cfg.DetachTimeout)
	defer cancel()
	start := timeNow()
	if err := mon.DeviceDel(ctx, id); err != nil {
		return fmt.Errorf("vm %q: detach %q: %w", vm.name, id, err)
	}
	vm.h.metrics.observe("detach", "ok", start)
	vm.mu.Lock()
	vm.rt.Detached = append(vm.rt.Detached, id)
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.log.Info("device detached", "device", id, "took", timeNow().Sub(start))
	return nil
}

func (vm *VM) attach(ctx context.Context, id string) error {
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	// A re-attach deferred to a live stream's end may meet a step's.
	vm.attachMu.Lock()
	defer vm.attachMu.Unlock()
	vm.mu.Lock()
	dev, pt := findDevice(&vm.spec, id, vm.overrides()[id])
	detached := slices.Contains(vm.rt.Detached, id)
	vm.mu.Unlock()
	if !pt {
		return fmt.Errorf("vm %q: device %q is not a passthrough device of this vm: %w", vm.name, id, ErrNotFound)
	}
	if !detached {
		return nil
	}
	props := map[string]any{}
	for k, v := range dev.Props {
		props[k] = v
	}
	start := timeNow()
	if err := mon.DeviceAdd(ctx, dev.Driver, dev.ID, props); err != nil {
		return fmt.Errorf("vm %q: attach %q: %w", vm.name, id, err)
	}
	vm.h.metrics.observe("attach", "ok", start)
	vm.mu.Lock()
	vm.rt.Detached = slices.DeleteFunc(vm.rt.Detached, func(s string) bool { return s == id })
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.log.Info("device attached", "device", id, "props", dev.Props, "took", timeNow().Sub(start))
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
			if first == nil {
				first = err
			}
		}
	}
	return first
}

// pciPresent reports whether QEMU lists a device with this qdev id on its
// PCI buses: the ground truth for tests and status.
func pciPresent(ctx context.Context, mon *qmp.Client, id string) (bool, error) {
	buses, err := mon.QueryPCI(ctx)
	if err != nil {
		return false, err
	}
	_, ok := qmp.FindPCIDevice(buses, id)
	return ok, nil
}

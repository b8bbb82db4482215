package devices

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/hostd/spec"
	"github.com/symvirt/symvirt/qmp"
)

// Device is a QEMU device: driver, id and properties.
type Device struct {
	Driver string
	ID     string
	Props  map[string]string
}

// RootPort is the bus of passthrough device id.
func RootPort(id string) string { return "rp-" + id }

// NIC is a NIC's device, override winning over the spec's properties.
func NIC(n spec.NIC, override map[string]string) Device {
	p := map[string]string{"netdev": "nd-" + n.ID}
	if n.MAC != "" {
		p["mac"] = n.MAC
	}
	maps.Copy(p, override)
	return Device{Driver: n.Model, ID: n.ID, Props: p}
}

// Generic is the device of a spec's other device, like NIC.
func Generic(d spec.Dev, override map[string]string) Device {
	p := map[string]string{}
	maps.Copy(p, d.Props)
	maps.Copy(p, override)
	return Device{Driver: d.Driver, ID: d.ID, Props: p}
}

// Passthrough returns the spec's passthrough device id on its root port;
// ok is false when the spec has no passthrough device of that id.
func Passthrough(s *spec.Spec, id string, override map[string]string) (d Device, ok bool) {
	for _, n := range s.NICs {
		if n.ID == id {
			d, ok = NIC(n, override), n.Passthrough
		}
	}
	for _, g := range s.Devs {
		if g.ID == id {
			d, ok = Generic(g, override), g.Passthrough
		}
	}
	if ok {
		d.Props["bus"] = RootPort(id)
	}
	return d, ok
}

// Plug hot-plugs d (on its root port, where it was unplugged from).
func (d Device) Plug(ctx context.Context, mon *qmp.Client) error {
	props := map[string]any{}
	for k, v := range d.Props {
		props[k] = v
	}
	return mon.DeviceAdd(ctx, d.Driver, d.ID, props)
}

// Present reports whether QEMU lists a device with this id on its PCI
// buses: the ground truth next to the caller's bookkeeping.
func Present(ctx context.Context, mon *qmp.Client, id string) (bool, error) {
	buses, err := mon.QueryPCI(ctx)
	if err != nil {
		return false, err
	}
	_, ok := qmp.FindPCIDevice(buses, id)
	return ok, nil
}

// Slot is the pool entry a device uses on this host.
type Slot struct {
	Pool  string `json:"pool"`
	Index int    `json:"index"`
}

// Pools are a host's passthrough devices by pool name, each entry a set of
// device properties (a VF's host address, a MAC).
type Pools map[string][]map[string]string

// Overrides are the pool properties of every device with a slot.
func (p Pools) Overrides(slots map[string]Slot) map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, s := range slots {
		if entries := p[s.Pool]; s.Index < len(entries) {
			out[id] = entries[s.Index]
		}
	}
	return out
}

// Allocate gives every pooled passthrough device of s (of only, when not
// nil) a slot in slots that is not used, keeping a valid one it has.
func (p Pools) Allocate(s *spec.Spec, slots map[string]Slot, used map[Slot]bool, only []string) error {
	for _, id := range s.PassthroughIDs() {
		pool := s.PoolOf(id)
		if pool == "" || (only != nil && !slices.Contains(only, id)) {
			continue
		}
		if cur, ok := slots[id]; ok && cur.Pool == pool && cur.Index < len(p[pool]) {
			continue
		}
		i := p.free(pool, used)
		if i < 0 {
			return fmt.Errorf("device %q: pool %q has %d entries, all in use: %w", id, pool, len(p[pool]), sentinel.ErrNoDevice)
		}
		slots[id] = Slot{pool, i}
		used[Slot{pool, i}] = true
	}
	return nil
}

func (p Pools) free(pool string, used map[Slot]bool) int {
	for i := range p[pool] {
		if !used[Slot{pool, i}] {
			return i
		}
	}
	return -1
}

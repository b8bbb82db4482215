package devices

import (
	"errors"
	"testing"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/hostd/spec"
)

// Allocate keeps a device's valid slot, skips the ones other VMs hold and
// refuses when the pool is exhausted; a pool entry's properties win.
func TestAllocate(t *testing.T) {
	pools := Pools{"vf": {{"mac": "m0"}, {"mac": "m1"}}}
	s := spec.Spec{NICs: []spec.NIC{{ID: "pt0", Model: "vmxnet3", MAC: "spec", Passthrough: true, Pool: "vf"}}}
	used := map[Slot]bool{{"vf", 0}: true}
	slots := map[string]Slot{}
	if err := pools.Allocate(&s, slots, used, nil); err != nil || slots["pt0"] != (Slot{"vf", 1}) {
		t.Fatalf("allocate: %v %v", err, slots)
	}
	if err := pools.Allocate(&s, slots, map[Slot]bool{{"vf", 0}: true}, nil); err != nil || slots["pt0"] != (Slot{"vf", 1}) {
		t.Fatalf("a valid slot is not kept: %v %v", err, slots)
	}
	d, ok := Passthrough(&s, "pt0", pools.Overrides(slots)["pt0"])
	if !ok || d.Props["mac"] != "m1" || d.Props["bus"] != "rp-pt0" {
		t.Fatalf("device %+v %v", d, ok)
	}
	err := pools.Allocate(&s, map[string]Slot{}, used, nil)
	if !errors.Is(err, sentinel.ErrNoDevice) {
		t.Fatalf("exhausted pool: %v", err)
	}
	if _, ok := Passthrough(&s, "nope", nil); ok {
		t.Fatal("an unknown id is a passthrough device")
	}
}

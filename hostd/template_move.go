package hostd

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/symvirt/symvirt/guestproto"
)

// A clone that moves to another host (live migration) or is restored
// from a checkpoint is the same clone there: its kept identity
// (fileCloneIdentity) goes with it, so that its guest, should it reboot
// there, takes the clone's hostname and machine-id back. It travels as
// the rest of the VM does: in the incoming request, over the channel the
// migration already uses (the coordinator, or a peer hostd over mutual
// TLS with the coordinator's grant, peerauth.go), or in the checkpoint's
// signed manifest. The receiving host trusts it no more than guestd
// trusts a CLONE: no seed, each field checked by a CLONE's rules (the
// request or manifest bounded in size as they are), each NIC's MAC one of
// the spec's; it is written 0600 as a clone's own.

// isClone reports whether the VM is a template's clone (it keeps a clone
// identity): its QEMUs name their RAM block as the template's state does
// (qemu.Args.NamedRAM), whether they load a state or boot.
func (vm *VM) isClone() bool {
	_, err := os.Stat(filepath.Join(vm.dir, fileCloneIdentity))
	return err == nil
}

// savedCloneIdentity is the VM's kept clone identity as recorded (no
// seed); ok is false for a VM that is not a clone.
func (vm *VM) savedCloneIdentity() (c guestproto.Clone, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(vm.dir, fileCloneIdentity))
	if errors.Is(err, os.ErrNotExist) {
		return c, false, nil
	}
	if err == nil {
		err = json.Unmarshal(data, &c)
	}
	if err != nil {
		return c, false, fmt.Errorf("vm %q: the clone's identity: %w", vm.name, err)
	}
	return c, true, nil
}

// movingCloneIdentity is what an incoming request carries of the VM's
// clone identity: nil for a VM that is not a clone.
func (vm *VM) movingCloneIdentity() (*guestproto.Clone, error) {
	c, ok, err := vm.savedCloneIdentity()
	if !ok {
		return nil, err
	}
	return &c, nil
}

// checkpointCloneIdentity is what a checkpoint's manifest keeps of the
// VM's clone identity (nil: not a clone); an unreadable one is not kept,
// and said.
func (vm *VM) checkpointCloneIdentity() *guestproto.Clone {
	c, err := vm.movingCloneIdentity()
	if err != nil {
		vm.log.Error("checkpoint: the clone's identity is not kept: a restored clone's guest that reboots will not take it back", "err", err)
	}
	return c
}

// createKeeping registers the VM of spec that a migration or a restore
// brings, with the clone identity that came with it (nil: not a clone),
// checked first.
func (h *Host) createKeeping(spec Spec, identity *guestproto.Clone) (*VM, error) {
	if identity != nil {
		if err := checkMovedIdentity(*identity, spec); err != nil {
			return nil, fmt.Errorf("vm %q: the clone identity that came with it: %w: %w", spec.Name, ErrInvalidSpec, err)
		}
	}
	vm, err := h.create(spec)
	if err != nil || identity == nil {
		return vm, err
	}
	if err := vm.saveCloneIdentity(*identity); err != nil {
		h.forget(vm)
		return nil, err
	}
	return vm, nil
}

// checkMovedIdentity checks a clone identity another host sent with the
// VM of spec.
func checkMovedIdentity(c guestproto.Clone, spec Spec) error {
	if err := guestproto.CheckCloneIdentity(c); err != nil {
		return err
	}
	var macs []string
	for _, n := range spec.NICs {
		macs = append(macs, n.MAC)
	}
	for i, n := range c.NICs {
		if n.MAC == "" || !slices.Contains(macs, n.MAC) {
			return fmt.Errorf("clone identity: nic %d: MAC %s is none of the spec's NICs'", i, n.MAC)
		}
	}
	return nil
}

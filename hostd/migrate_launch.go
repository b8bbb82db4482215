package hostd

import (
	"context"
	"fmt"
	"sync"
)

// A migration's destination QEMU is started by the Launch step, which the
// machine sends beside the source's Detach (the guest's unplug of its
// NIC takes longer than the destination's start, so the user no longer
// waits for both); the Migrate step then streams into it. The source
// keeps the destination's answer here for its Migrate. A Migrate that
// finds none (a hostd restarted in between, or a driver without Launch)
// asks the destination itself, as before: a destination still holding
// the launched copy refuses it as a second one, and the operation rolls
// back (its CancelMigrate drops that copy).

// launchedKey names one launch: an operation's VM and its destination.
type launchedKey struct {
	vm, op   string
	destAddr string
}

// launches holds the destinations' answers until their Migrate takes them.
type launches struct {
	mu sync.Mutex
	m  map[launchedKey]IncomingResponse
}

func (l *launches) put(k launchedKey, inc IncomingResponse) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[launchedKey]IncomingResponse{}
	}
	l.m[k] = inc
}

func (l *launches) take(k launchedKey) (IncomingResponse, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	inc, ok := l.m[k]
	delete(l.m, k)
	return inc, ok
}

// drop forgets every launch of vm's operation op.
func (l *launches) drop(vm, op string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.m {
		if k.vm == vm && k.op == op {
			delete(l.m, k)
		}
	}
}

// launchLate (benchmarks only) makes Launch a no-op, so that Migrate
// starts the destination after the Detach: the ordering before Launch,
// measured side by side with it.
var launchLate bool

// launchStep asks the destination to start the VM's incoming QEMU. It
// takes no lock of the VM (the Detach beside it holds it): it reads only
// the VM's spec and its guest round, which Prepare set.
func (vm *VM) launchStep(ctx context.Context, req StepRequest) error {
	if launchLate {
		return nil
	}
	if vm.copiesStorage(req.Migrate.CopyStorage) {
		return fmt.Errorf("vm %q: launch: a storage migration's destination is started by its migrate step: %w", vm.name, ErrInvalidSpec)
	}
	ireq, err := vm.incomingBase(req)
	if err != nil {
		return err
	}
	start := timeNow()
	inc, err := vm.h.peer(req.Migrate.Dest).Incoming(ctx, ireq)
	if err != nil {
		return fmt.Errorf("vm %q: destination %s: %w", vm.name, req.Migrate.Dest, err)
	}
	vm.logPhase("migrate_incoming", timeNow().Sub(start))
	vm.h.launched.put(launchedKey{vm.name, req.Op, req.Migrate.Dest}, inc)
	return nil
}

// takeLaunched returns (and forgets) what the destination answered to
// this operation's Launch, if it did.
func (vm *VM) takeLaunched(op, dest string) (IncomingResponse, bool) {
	return vm.h.launched.take(launchedKey{vm.name, op, dest})
}

// forgetLaunched drops a launch its operation closed without using.
func (h *Host) forgetLaunched(vm, op string) {
	h.launched.drop(vm, op)
}

package hostd

import (
	"context"
	"fmt"
	"sync"
)

// opLock is a VM's operation lock: a mutex that callers may also wait
// for until a deadline. API calls take it with TryLock (a VM that is busy
// answers ErrBusy at once); work hostd starts itself, which must not be
// refused for an operation that is about to end, waits with LockCtx.
// The zero value is unlocked.
type opLock struct {
	mu    sync.Mutex
	state sync.Mutex    // guards freed
	freed chan struct{} // closed by the next Unlock (nil: nobody waits)
}

// TryLock takes the lock if it is free.
func (l *opLock) TryLock() bool { return l.mu.TryLock() }

// Unlock frees the lock and wakes whoever waits for it.
func (l *opLock) Unlock() {
	l.mu.Unlock()
	l.state.Lock()
	if l.freed != nil {
		close(l.freed)
		l.freed = nil
	}
	l.state.Unlock()
}

// LockCtx takes the lock, waiting for it to be freed until ctx ends.
func (l *opLock) LockCtx(ctx context.Context) error {
	for {
		// The channel is taken before trying: an Unlock between a
		// failed try and the wait still closes it.
		l.state.Lock()
		if l.freed == nil {
			l.freed = make(chan struct{})
		}
		freed := l.freed
		l.state.Unlock()
		if l.mu.TryLock() {
			return nil
		}
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// lockedWait runs do under the VM's operation lock, as op, waiting until
// ctx ends for an operation under way to finish.
func (vm *VM) lockedWait(ctx context.Context, op string, do func() error) error {
	if err := vm.op.LockCtx(ctx); err != nil {
		vm.mu.Lock()
		cur := vm.operation
		vm.mu.Unlock()
		return fmt.Errorf("vm %q is still busy with %s: %w: %w", vm.name, cur, ErrBusy, err)
	}
	vm.mu.Lock()
	vm.operation = op
	vm.mu.Unlock()
	defer vm.unlock()
	return do()
}

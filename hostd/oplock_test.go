package hostd

import (
	"context"
	"errors"
	"testing"
)

// TestOpLockWaitsForUnlock: a waiter wakes when the holder unlocks (not
// on a poll: nothing else would wake it), and one whose deadline ends
// first gives up without the lock.
func TestOpLockWaitsForUnlock(t *testing.T) {
	var l opLock
	if !l.TryLock() {
		t.Fatal("a free lock refused TryLock")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.LockCtx(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("LockCtx on a held lock with an ended context: %v", err)
	}
	got := make(chan error)
	for range 3 { // three waiters: each Unlock hands the lock to one
		go func() { got <- l.LockCtx(context.Background()) }()
	}
	for i := range 3 {
		l.Unlock()
		if err := <-got; err != nil {
			t.Fatalf("waiter %d: %v", i, err)
		}
		if l.TryLock() {
			t.Fatalf("waiter %d woke but does not hold the lock", i)
		}
	}
	l.Unlock()
	if !l.TryLock() {
		t.Fatal("lock not free after the last waiter unlocked")
	}
}

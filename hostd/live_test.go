package hostd

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// Snapshot points are serialized through a lock file shared by every hostd
// of a machine: a second taker waits for the first, and gives up when its
// context ends.
func TestLockMachineSerializes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snapshot.lock")
	release, err := lockMachine(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := lockMachine(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock while the first is held: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		r, err := lockMachine(context.Background(), path)
		if err == nil {
			r()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("took the lock while held: %v", err)
	case <-time.After(30 * time.Millisecond):
	}
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter never got the lock after its release")
	}
	if _, err := lockMachine(context.Background(), filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Fatal("a lock file that cannot be created gave a lock")
	}
}

// The reserved room covers what a stream of that much RAM can write.
func TestStreamBound(t *testing.T) {
	for _, mem := range []Size{256, 1024, 2048} {
		ram := int64(mem) << 20
		// Every 4 KiB page with its 8-byte header, plus device state.
		if need := ram + ram/4096*8 + 16<<20; streamBound(mem) < need {
			t.Errorf("%d MiB: bound %d < %d", mem, streamBound(mem), need)
		}
	}
}

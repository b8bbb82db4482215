package guestd

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWaitFrozenWakesOnChange: waitFrozen returns when cgroup.events changes
// to "frozen 1", not at its next timed re-read (an hour here: a wait that
// only polled would overrun the test's context and fail).
func TestWaitFrozenWakesOnChange(t *testing.T) {
	dir := t.TempDir()
	events := filepath.Join(dir, "cgroup.events")
	if err := os.WriteFile(events, []byte("populated 1\nfrozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		// One write in place, as the kernel changes the file: a truncate
		// and rewrite would be seen half done.
		f, err := os.OpenFile(events, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer f.Close()
		f.WriteAt([]byte("populated 1\nfrozen 1\n"), 0)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	var ok bool
	var err error
	go func() {
		ok, err = waitFrozen(ctx, dir, time.Hour, time.Hour)
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("waitFrozen did not see cgroup.events change")
	}
	if !ok || err != nil {
		t.Fatalf("waitFrozen = %v, %v; want frozen", ok, err)
	}
}

// TestWaitFrozenBounds: without a change, the wait ends at settle (not
// frozen, no error), and at ctx's end with an error.
func TestWaitFrozenBounds(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.events"), []byte("frozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, err := waitFrozen(context.Background(), dir, 50*time.Millisecond, 10*time.Millisecond); ok || err != nil {
		t.Errorf("past settle: %v, %v; want not frozen, no error", ok, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if ok, err := waitFrozen(ctx, dir, time.Hour, 10*time.Millisecond); ok || err == nil {
		t.Errorf("ctx ended: %v, %v; want an error", ok, err)
	}
}

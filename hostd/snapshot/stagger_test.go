package snapshot

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

// Two precopies starting at once on a machine start stagger apart.
func TestStaggerStartSpacesStarts(t *testing.T) {
	staggerLockPath = filepath.Join(t.TempDir(), "precopy.lock")
	ctx := context.Background()
	first, err := staggerStart(ctx, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	first()
	second, err := staggerStart(ctx, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	second()
	if waited := time.Since(start); waited < stagger {
		t.Errorf("second start %v after the first, want at least %v", waited, stagger)
	}
	// A start waiting past its request's end gives up (the third never
	// says it started: the lock stays held).
	if _, err := staggerStart(ctx, slog.Default()); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := staggerStart(cctx, slog.Default()); err == nil {
		t.Error("a start whose context ended went on")
	}
}

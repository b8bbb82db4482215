package guestd

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Hook scripts run as root: only those owned by root and writable by root
// alone, in a directory of the same, run. A script another user could have
// written (world-writable, owned by nobody, or reached through a symlink
// into a world-writable directory) is skipped with a warning, and a hook
// directory others can write runs nothing.
func TestHookScriptOwnerAndMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	base := shortDir(t)
	dir := filepath.Join(base, "hooks.d")
	os.Mkdir(dir, 0o755)
	ran := filepath.Join(base, "ran")
	script := func(path string, mode os.FileMode) {
		body := "#!/bin/sh\necho " + filepath.Base(path) + " >>" + ran + "\n"
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, mode) // past the umask
	}
	script(filepath.Join(dir, "10-root"), 0o755)
	script(filepath.Join(dir, "20-world-writable"), 0o777)
	script(filepath.Join(dir, "30-group-writable"), 0o775)
	script(filepath.Join(dir, "40-nobody"), 0o755)
	os.Chown(filepath.Join(dir, "40-nobody"), 65534, 65534)
	tmp := filepath.Join(base, "tmp")
	os.Mkdir(tmp, 0o755)
	os.Chmod(tmp, 0o1777)
	script(filepath.Join(tmp, "payload"), 0o755) // root's file, but in a dir anyone can write
	os.Symlink(filepath.Join(tmp, "payload"), filepath.Join(dir, "50-link-into-tmp"))

	var logs syncBuffer
	h := hookRun{dir: dir, args: []string{"prepare", "checkpoint"}, delay: time.Second,
		log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, err := h.prepare(ctx)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if !slices.Equal(ok, []string{"10-root"}) {
		t.Errorf("ran %q, want only 10-root", ok)
	}
	if b, _ := os.ReadFile(ran); string(b) != "10-root\n" {
		t.Errorf("scripts that ran:\n%s", b)
	}
	for _, want := range []string{
		"hook=20-world-writable err=\"guestd: hook script not trusted: file " + filepath.Join(dir, "20-world-writable") + " is group- or world-writable (mode 0777)\"",
		"hook=30-group-writable",
		"hook=40-nobody err=\"guestd: hook script not trusted: file " + filepath.Join(dir, "40-nobody") + " is owned by uid 65534, not root\"",
		"hook=50-link-into-tmp err=\"guestd: hook script not trusted: directory " + tmp + " is group- or world-writable (mode 0777)\"",
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}

	// A hook directory anyone can write runs nothing, not even root's script.
	os.Remove(ran)
	os.Chmod(dir, 0o777)
	if ok, err := h.prepare(ctx); err != nil || len(ok) != 0 {
		t.Errorf("world-writable hook dir: ran %q (%v), want nothing", ok, err)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Error("a script ran from a world-writable hook dir")
	}
	if !strings.Contains(logs.String(), "hook scripts skipped: their directory is not trusted") {
		t.Errorf("no warning for the hook dir:\n%s", logs.String())
	}
}

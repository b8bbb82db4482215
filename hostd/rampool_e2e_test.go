package hostd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestPooledRAMCarriesNoGuestData mounts the attack a RAM pool invites: a
// guest leaves a secret in its memory and goes; the next guest to start on
// that host gets the departed guest's RAM file (the same inode) and looks
// for the secret in it, in the pages it has not written. hostd zeroes a
// file before it hands it out, so the secret is nowhere in the new guest's
// RAM. That guest goes too, and a guest migrated in from another host runs
// on the file (its QEMU takes the pages it is not sent as zeros).
func TestPooledRAMCarriesNoGuestData(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:02")
	ctx := ctxT(t, 4*time.Minute)
	secret := "symvirt-secret-" + randomHex(t)
	old := guestSpec(t, "old", "nic")
	old.Initrd = testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/30-secret": {Mode: 0o755, Data: []byte("#!/bin/sh\nyes " + secret + " | head -c 16777216 >/secret\necho symvirt-secret-written\n")},
	})
	if _, err := dst.Client().Create(ctx, old, true); err != nil {
		t.Fatal(err)
	}
	waitLog(t, serialLog(dst, "old"), regexp.MustCompile(`symvirt-secret-written`), 90*time.Second)
	ram := func(vm string) string { return filepath.Join(dst.Layout().RAMDirs()[0], vm+".ram") }
	if n := occurrences(t, ram("old"), secret); n == 0 {
		t.Fatalf("the secret is not in the departing guest's RAM file %s: nothing to look for", ram("old"))
	}
	ino := statT(t, ram("old")).Ino
	leave(ctx, t, dst, "old", 1)

	if _, err := dst.Client().Create(ctx, guestSpec(t, "next", "nic"), true); err != nil {
		t.Fatal(err)
	}
	waitHostLogs(t, dst, "guest RAM file from the pool", 1, 5*time.Second)
	if got := statT(t, ram("next")).Ino; got != ino {
		t.Fatalf("the next guest's RAM file is inode %d, the departed guest's was %d: the pool was not used", got, ino)
	}
	waitCounter(t, serialLog(dst, "next"), 3, 90*time.Second)
	if n := occurrences(t, ram("next"), secret); n != 0 {
		t.Fatalf("the departed guest's secret is in the next guest's RAM %d times", n)
	}
	leave(ctx, t, dst, "next", 2)

	if _, err := src.Client().Create(ctx, guestSpec(t, "moved", "nic"), true); err != nil {
		t.Fatal(err)
	}
	seen := waitCounter(t, serialLog(src, "moved"), 3, 90*time.Second)
	if _, err := src.Client().Migrate(ctx, "moved", hostd.MigrateOptions{To: dst.Addr()}, nil); err != nil {
		t.Fatal(err)
	}
	waitHostLogs(t, dst, "guest RAM file from the pool", 2, 5*time.Second)
	if got := statT(t, ram("moved")).Ino; got != ino {
		t.Fatalf("the migrated guest's RAM file is inode %d, the pool's %d", got, ino)
	}
	waitCounter(t, serialLog(dst, "moved"), seen+3, 60*time.Second)
}

// leave stops and deletes vm at h, and waits for its RAM file to be the
// pool's n-th zeroed one.
func leave(ctx context.Context, t *testing.T, h *testenv.Hostd, vm string, n int) {
	t.Helper()
	if _, err := h.Client().Stop(ctx, vm, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.Client().Delete(ctx, vm); err != nil {
		t.Fatal(err)
	}
	waitHostLogs(t, h, "guest RAM file zeroed for the pool", n, 60*time.Second)
}

func randomHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// occurrences counts s in the file at path.
func occurrences(t *testing.T, path, s string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(data, []byte(s))
}

// waitHostLogs waits until a message is n times in a hostd's log.
func waitHostLogs(t *testing.T, h *testenv.Hostd, msg string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for strings.Count(h.Logs(), msg) < n {
		if time.Now().After(deadline) {
			t.Fatalf("hostd %s: no %q in its log within %s", h.StateDir, msg, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

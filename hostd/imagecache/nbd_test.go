package imagecache

import (
	"context"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// QEMU reads an image through a qcow2 overlay whose backing file is the
// cache's NBD export: qemu-img compare finds it identical to the image
// (every chunk fetched through the cache), and a write to the export is
// refused.
func TestNBDExportUnderQcow2Overlay(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	s, path := seed(t, 12)
	src := &cacheSource{name: "seed", c: s}
	dir := t.TempDir()
	c, err := Open(dir, s.m, s.id, NewSources([]Source{src}, slog.Default()), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go ServeNBD(l, "img", c, slog.Default())
	ov := filepath.Join(dir, "vm.qcow2")
	backing := "nbd+unix:///img?socket=" + sock
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t.Logf("running %v", args)
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", ov, strconv.FormatInt(s.m.Size, 10))
	run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", ov, path)
	if st := c.Stats(); st.Held != st.Chunks || st.Fetched != 8*testChunk {
		t.Fatalf("after a full read: %+v (want all held, 8 data chunks fetched)", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "write 0 512", backing).CombinedOutput()
	if err == nil && !containsAny(string(out), "read-only", "Operation not permitted", "failed") {
		t.Fatalf("a write to the export was not refused: %s", out)
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if len(sub) > 0 && len(s) >= len(sub) {
			for i := 0; i+len(sub) <= len(s); i++ {
				if s[i:i+len(sub)] == sub {
					return true
				}
			}
		}
	}
	return false
}

package hostd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/disk"
	"github.com/symvirt/symvirt/hostd/imagecache"
)

// patternImage is an image whose 64 KiB block i is filled with byte i.
type patternImage struct{ size int64 }

func (p patternImage) Size() int64 { return p.size }

func (p patternImage) ReadAt(_ context.Context, b []byte, off int64) error {
	for i := range b {
		b[i] = byte((off + int64(i)) >> 16)
	}
	return nil
}

// nbdServer is an image's export that the test stops (as a killed hostd
// does: listener and connections gone) and starts again on its socket.
type nbdServer struct {
	t     *testing.T
	sock  string
	mu    sync.Mutex
	l     net.Listener
	conns []net.Conn
}

type trackListener struct {
	net.Listener
	s *nbdServer
}

func (l trackListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns = append(l.s.conns, c)
		l.s.mu.Unlock()
	}
	return c, err
}

func (s *nbdServer) start() {
	os.Remove(s.sock)
	l, err := net.Listen("unix", s.sock)
	if err != nil {
		s.t.Fatal(err)
	}
	s.l = l
	go imagecache.ServeNBD(trackListener{l, s}, "img", patternImage{16 << 20}, slog.Default())
}

func (s *nbdServer) stop() {
	s.l.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// qemuIO drives one qemu-io process on an overlay, a command at a time.
type qemuIO struct {
	t     *testing.T
	in    io.WriteCloser
	lines chan string
}

func startQemuIO(t *testing.T, overlay string) *qemuIO {
	cmd := exec.Command("qemu-io", "-f", "qcow2", overlay)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	q := &qemuIO{t: t, in: in, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			q.lines <- sc.Text()
		}
		close(q.lines)
	}()
	return q
}

// read reads 4 KiB of block i, checking its pattern; it returns
// qemu-io's answer ("" when the read and the check passed).
func (q *qemuIO) read(i int) string {
	fmt.Fprintf(q.in, "read -P %d %d 4k\n", i, i<<16)
	for l := range q.lines {
		switch {
		case strings.Contains(l, "failed"):
			return l
		case strings.Contains(l, "bytes at offset"):
			return ""
		}
	}
	q.t.Fatal("qemu-io ended")
	return ""
}

func reconnectOverlay(t *testing.T, delay time.Duration) (*nbdServer, *qemuIO) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed")
	}
	dir := t.TempDir()
	s := &nbdServer{t: t, sock: filepath.Join(dir, "nbd.sock")}
	s.start()
	t.Cleanup(s.stop)
	ov := filepath.Join(dir, "image.qcow2")
	if err := disk.CreateOverlay(context.Background(), ov, nbdBacking("img", s.sock, delay), "raw", 16<<20); err != nil {
		t.Fatal(err)
	}
	return s, startQemuIO(t, ov)
}

// A reader of an image VM's overlay keeps reading across a restart of
// the image's NBD export: the first read after the server went away
// waits for it and reconnects (QEMU's reconnect-delay) instead of
// failing, and every block read has its content.
func TestImageOverlayReconnectsToRestartedExport(t *testing.T) {
	s, q := reconnectOverlay(t, imageReconnectDelay)
	if r := q.read(1); r != "" {
		t.Fatalf("read before the restart: %s", r)
	}
	s.stop()
	s.start()
	for i := 2; i < 6; i++ {
		if r := q.read(i); r != "" {
			t.Fatalf("read of block %d after the export restarted: %s", i, r)
		}
	}
}

// An export that never comes back surfaces as an I/O error once the
// reconnect delay is over: a read does not hang forever.
func TestImageOverlayReadFailsWhenExportNeverReturns(t *testing.T) {
	s, q := reconnectOverlay(t, time.Second)
	if r := q.read(1); r != "" {
		t.Fatalf("read before the export went away: %s", r)
	}
	s.stop()
	if r := q.read(2); !strings.Contains(r, "Input/output error") {
		t.Fatalf("read with the export gone for good: %q, want an I/O error", r)
	}
}

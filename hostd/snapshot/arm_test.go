package snapshot

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// fakeQEMU is a monitor that answers every command, failing those named in
// fail, and records what it was asked.
type fakeQEMU struct {
	mu   sync.Mutex
	cmds []string
}

func (f *fakeQEMU) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.cmds)
}

// newFakeQEMU connects a qmp.Client to a fake QEMU over a unix socket pair
// (so that descriptors can be passed).
func newFakeQEMU(t *testing.T, fail ...string) (*qmp.Client, *fakeQEMU) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "qmp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	srv, cli := conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { srv.Close() })
	fq := &fakeQEMU{}
	go func() {
		srv.Write([]byte(`{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0},"package":""},"capabilities":[]}}` + "\r\n"))
		r := bufio.NewReader(srv)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
				ID        string          `json:"id"`
			}
			json.Unmarshal(line, &req)
			fq.mu.Lock()
			fq.cmds = append(fq.cmds, req.Execute+" "+string(req.Arguments))
			fq.mu.Unlock()
			reply := map[string]any{"id": req.ID, "return": map[string]any{}}
			if slices.Contains(fail, req.Execute) {
				reply = map[string]any{"id": req.ID, "error": map[string]any{"class": "GenericError", "desc": "refused"}}
			}
			b, _ := json.Marshal(reply)
			srv.Write(append(b, '\r', '\n'))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mon, err := qmp.New(ctx, cli, qmp.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	return mon, fq
}

// An arm reserves the state file's room in its directory and hands QEMU the
// file; disarmed unused, the directory goes and QEMU lets the file go.
func TestArmReservesAndDisarmRemoves(t *testing.T) {
	mon, fq := newFakeQEMU(t)
	dir := filepath.Join(t.TempDir(), "ck")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const ram = 32 << 20
	a, err := Arm(context.Background(), mon, dir, ram, 0)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("no fallocate here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "state.bin"), &st); err != nil || st.Blocks*512 < bound(ram) {
		t.Fatalf("state file: %v, %d bytes allocated, want %d reserved", err, st.Blocks*512, bound(ram))
	}
	a.Disarm()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("disarmed, the directory is left: %v", err)
	}
	asked := fq.asked()
	for _, want := range []string{`getfd {"fdname":"symvirt-live"}`, `closefd {"fdname":"symvirt-live"}`,
		`migrate-set-capabilities {"capabilities":[{"capability":"background-snapshot","state":false}]}`} {
		if !slices.Contains(asked, want) {
			t.Errorf("QEMU was not asked %s: %q", want, asked)
		}
	}
}

// An arm that fails leaves no directory behind.
func TestArmFailureRemovesDir(t *testing.T) {
	for _, refused := range []string{"migrate-set-capabilities", "getfd", "migrate-set-parameters"} {
		mon, _ := newFakeQEMU(t, refused)
		dir := filepath.Join(t.TempDir(), "ck")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := Arm(context.Background(), mon, dir, 32<<20, 0); err == nil {
			t.Fatalf("%s refused: armed", refused)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s refused: the directory is left: %v", refused, err)
		}
	}
}

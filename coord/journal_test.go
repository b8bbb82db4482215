package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
)

// fullStore is the bbolt store on a disk that fills up: once full is set,
// every Put fails as a full disk fails it.
type fullStore struct {
	Store
	full atomic.Bool
}

func (s *fullStore) Put(bucket, key string, v any) error {
	if s.full.Load() {
		return &os.PathError{Op: "write", Path: "coord.db", Err: syscall.ENOSPC}
	}
	return s.Store.Put(bucket, key, v)
}

// fakeHostd answers every step OK and records what it was sent; the first
// prepare step fills the coordinator's disk before it is answered.
type fakeHostd struct {
	mu        sync.Mutex
	steps     []string // kind/vm
	afterFull []string
	renewFull int
	full      bool
	fill      func()
	slow      map[string]time.Duration // kind -> how long such a step takes
	fail      map[string]string        // kind -> why such a step fails
}

func (f *fakeHostd) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/steps", func(w http.ResponseWriter, r *http.Request) {
		var req hostd.StepRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		if f.full {
			f.afterFull = append(f.afterFull, req.Kind+"/"+req.VM)
		}
		f.steps = append(f.steps, req.Kind+"/"+req.VM)
		if req.Kind == hostd.StepPrepare && !f.full && f.fill != nil {
			f.fill()
			f.full = true
		}
		took, reason := f.slow[req.Kind], f.fail[req.Kind]
		f.mu.Unlock()
		time.Sleep(took)
		json.NewEncoder(w).Encode(hostd.StepResult{OK: reason == "", Reason: reason, Digest: "sha256:00"})
	})
	mux.HandleFunc("POST /v1/leases/renew", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		if f.full {
			f.renewFull++
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]int{"renewed": 1})
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}")) })
	return mux
}

func (f *fakeHostd) snapshot() (steps, afterFull []string, renewFull int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.steps...), append([]string(nil), f.afterFull...), f.renewFull
}

// The coordinator's journal cannot be written in the middle of a job
// checkpoint (its disk filled up while the guests prepared): the driver
// sends no further action, stops renewing the operation's leases (so the
// hostds undo what it paused), says why in the result and the error, and
// refuses a new operation while the journal cannot be written.
func TestJournalWriteFailureStopsOperation(t *testing.T) {
	bolt, err := OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &fullStore{Store: bolt}
	journalScenario(t, st, 2, func() { st.full.Store(true) }, func() { st.full.Store(false) })
}

// The same on a real full disk: the store is bbolt on a small tmpfs that
// the test fills to the last byte while the guests prepare. (The job is
// large, so its journal record needs pages bbolt does not have free.)
func TestJournalOnFullTmpfsStopsOperation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	fill := func() {
		f, err := os.Create(filler)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		buf := make([]byte, 4096)
		for {
			if _, err := f.Write(buf); err != nil {
				t.Logf("tmpfs full: %v", err)
				return
			}
		}
	}
	journalScenario(t, st, 150, fill, func() { os.Remove(filler) })
}

// journalScenario runs a checkpoint of a job of n VMs whose first prepare
// step makes the journal unwritable (fill), and checks what the driver
// did; unfill gives the room back.
func journalScenario(t *testing.T, st Store, n int, fill, unfill func()) {
	fake := &fakeHostd{fill: fill}
	srv := httptest.NewServer(fake.handler())
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	c := &Coord{cfg: Config{StateDir: t.TempDir(), CheckpointDir: "/ck", Lease: 300 * time.Millisecond,
		PrepareTimeout: 10 * time.Second, StepTimeout: 10 * time.Second},
		store: st, log: slog.New(slog.DiscardHandler), busy: map[string]string{}}
	t.Cleanup(func() { c.Close() })
	for _, h := range []string{"h1", "h2"} {
		if err := c.AddHost(Host{Name: h, Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	j1 := Job{Name: "j1"}
	for i := range n {
		j1.VMs = append(j1.VMs, JobVM{Name: fmt.Sprintf("vm%d", i), Host: "h1"})
	}
	for _, j := range []Job{j1, {Name: "j2", VMs: []JobVM{{Name: "other", Host: "h1"}}}} {
		if err := st.Put(bucketJobs, j.Name, j); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	res, err := c.Checkpoint(ctx, "j1", CheckpointOptions{}, nil)
	if err == nil || !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "journal write failed: ") ||
		!strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("checkpoint whose journal filled up: %v", err)
	}
	t.Logf("error: %v", err)
	if !strings.Contains(res.Reason, "journal write failed") || res.Done || res.Outcome != "" {
		t.Fatalf("result: %+v", res)
	}
	// The job whose operation stopped stays busy until its leases ran out.
	if _, err := c.Checkpoint(ctx, "j1", CheckpointOptions{}, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("j1 right after its operation stopped: %v", err)
	}
	// Past a few lease periods: nothing but the prepares already under way
	// went out, and no lease was renewed.
	time.Sleep(4 * c.cfg.Lease)
	steps, after, renewFull := fake.snapshot()
	t.Logf("%d steps sent, %d after the disk filled; renewals after: %d", len(steps), len(after), renewFull)
	for _, s := range after {
		if !strings.HasPrefix(s, hostd.StepPrepare+"/") {
			t.Errorf("an action was sent after the journal failed: %s", s)
		}
	}
	if renewFull > 2 { // one round (a renewal per host) may already be on its way
		t.Errorf("%d lease renewals after the journal failed: the hostds would never undo the operation", renewFull)
	}

	// New operations are refused while the journal cannot be written, and
	// send nothing.
	sent := len(steps)
	if _, err := c.Checkpoint(ctx, "j2", CheckpointOptions{}, nil); err == nil || !strings.Contains(err.Error(), "journal write failed") {
		t.Fatalf("a new checkpoint while the journal is full: %v", err)
	}
	if _, err := c.Migrate(ctx, "j2", MigrateOptions{To: []string{"h2"}}, nil); err == nil || !strings.Contains(err.Error(), "journal write failed") {
		t.Fatalf("a new migration while the journal is full: %v", err)
	}
	if steps, _, _ := fake.snapshot(); len(steps) != sent {
		t.Fatalf("a refused operation sent %v", steps[sent:])
	}

	// Room again: operations run.
	unfill()
	fake.mu.Lock()
	fake.fill, fake.full = nil, false
	fake.mu.Unlock()
	for _, j := range []string{"j2", "j1"} {
		if res, err := c.Checkpoint(ctx, j, CheckpointOptions{}, nil); err != nil {
			t.Fatalf("checkpoint of %s once the journal can be written: %v %+v", j, err, res.Reason)
		}
	}
}

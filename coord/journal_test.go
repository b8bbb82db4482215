package coord

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
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
// step of kind fillAt fills the coordinator's disk before it answers.
type fakeHostd struct {
	mu        sync.Mutex
	steps     []string // kind/vm
	renewals  int
	afterFull []string
	renewFull int
	fillAt    string
	store     *fullStore
}

func (f *fakeHostd) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/steps", func(w http.ResponseWriter, r *http.Request) {
		var req hostd.StepRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		if f.store.full.Load() {
			f.afterFull = append(f.afterFull, req.Kind+"/"+req.VM)
		}
		f.steps = append(f.steps, req.Kind+"/"+req.VM)
		if req.Kind == f.fillAt {
			f.store.full.Store(true)
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(hostd.StepResult{OK: true, Digest: "sha256:00"})
	})
	mux.HandleFunc("POST /v1/leases/renew", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.renewals++
		if f.store.full.Load() {
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
	fake := &fakeHostd{fillAt: hostd.StepPrepare, store: st}
	srv := httptest.NewServer(fake.handler())
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	c := &Coord{cfg: Config{StateDir: t.TempDir(), CheckpointDir: "/ck", Lease: 300 * time.Millisecond,
		PrepareTimeout: 5 * time.Second, StepTimeout: 5 * time.Second},
		store: st, log: slog.New(slog.DiscardHandler), busy: map[string]string{}}
	t.Cleanup(func() { c.Close() })
	for _, h := range []string{"h1", "h2"} {
		if err := c.AddHost(Host{Name: h, Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	for _, j := range []Job{{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}, {Name: "vm2", Host: "h1"}}},
		{Name: "j2", VMs: []JobVM{{Name: "vm3", Host: "h1"}}}} {
		if err := st.Put(bucketJobs, j.Name, j); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	res, err := c.Checkpoint(ctx, "j1", CheckpointOptions{}, nil)
	if err == nil || !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "journal write failed: ") ||
		!strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("checkpoint whose journal filled up: %v", err)
	}
	if !strings.Contains(res.Reason, "journal write failed") || res.Done || res.Outcome != "" {
		t.Fatalf("result: %+v", res)
	}
	// The job whose operation stopped stays busy until its leases ran out.
	if _, err := c.Checkpoint(ctx, "j1", CheckpointOptions{}, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("j1 right after its operation stopped: %v", err)
	}
	// Past a few lease periods: nothing more went out.
	time.Sleep(4 * c.cfg.Lease)
	steps, after, renewFull := fake.snapshot()
	t.Logf("steps sent: %v; after the disk filled: %v; renewals after: %d", steps, after, renewFull)
	for _, s := range after {
		if !strings.HasPrefix(s, hostd.StepPrepare+"/") {
			t.Errorf("an action was sent after the journal failed: %s", s)
		}
	}
	if renewFull > 1 { // one may already be on its way
		t.Errorf("%d lease renewals after the journal failed: the hostds would never undo the operation", renewFull)
	}

	// A new operation is refused while the journal cannot be written, and
	// sends nothing.
	n := len(steps)
	if _, err := c.Checkpoint(ctx, "j2", CheckpointOptions{}, nil); err == nil || !strings.Contains(err.Error(), "journal write failed") {
		t.Fatalf("a new checkpoint while the journal is full: %v", err)
	}
	if _, err := c.Migrate(ctx, "j2", MigrateOptions{To: []string{"h2"}}, nil); err == nil || !strings.Contains(err.Error(), "journal write failed") {
		t.Fatalf("a new migration while the journal is full: %v", err)
	}
	if steps, _, _ := fake.snapshot(); len(steps) != n {
		t.Fatalf("a refused operation sent %v", steps[n:])
	}

	// Room again: operations run.
	st.full.Store(false)
	fake.fillAt = ""
	for _, j := range []string{"j2", "j1"} {
		if res, err := c.Checkpoint(ctx, j, CheckpointOptions{}, nil); err != nil {
			t.Fatalf("checkpoint of %s once the journal can be written: %v %+v", j, err, res)
		}
	}
}

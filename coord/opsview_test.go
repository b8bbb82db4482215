package coord

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
)

// gatedHostd answers every step OK at once, except steps of kind gate:
// each is announced on held and answered only once open is closed.
type gatedHostd struct {
	gate string
	held chan string
	open chan struct{}
	once sync.Once
	mu   sync.Mutex
	sent []string
}

func (g *gatedHostd) release() { g.once.Do(func() { close(g.open) }) }

func (g *gatedHostd) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/steps", func(w http.ResponseWriter, r *http.Request) {
		var req hostd.StepRequest
		json.NewDecoder(r.Body).Decode(&req)
		g.mu.Lock()
		g.sent = append(g.sent, req.Kind+"/"+req.VM)
		g.mu.Unlock()
		if req.Kind == g.gate {
			g.held <- req.VM
			select {
			case <-g.open:
			case <-r.Context().Done():
			}
		}
		json.NewEncoder(w).Encode(hostd.StepResult{OK: true, Digest: "sha256:00"})
	})
	mux.HandleFunc("POST /v1/leases/renew", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]int{"renewed": 1})
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{}")) })
	return mux
}

// opsAPI is a coordinator serving its API on a unix socket, its two
// hosts one fake hostd whose steps of kind gate wait, and a client.
func opsAPI(t *testing.T, gate string) (*Client, *gatedHostd) {
	g := &gatedHostd{gate: gate, held: make(chan string, 8), open: make(chan struct{})}
	srv := httptest.NewServer(g.handler())
	t.Cleanup(srv.Close)
	t.Cleanup(g.release) // runs first: frees the held steps
	st, err := OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &Coord{cfg: Config{StateDir: t.TempDir(), CheckpointDir: "/ck", Lease: 5 * time.Second,
		PrepareTimeout: 60 * time.Second, StepTimeout: 60 * time.Second, TransferTimeout: 60 * time.Second},
		store: st, log: slog.New(slog.DiscardHandler), busy: map[string]string{}}
	t.Cleanup(func() { c.Close() })
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, h := range []string{"h1", "h2"} {
		if err := c.AddHost(Host{Name: h, Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "a", Host: "h1"}, {Name: "b", Host: "h2"}}}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "coord.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	api := &http.Server{Handler: c.Handler()}
	go api.Serve(l)
	t.Cleanup(func() { api.Close() })
	return NewClient(sock, nil), g
}

type opOut struct {
	res machine.Result
	err error
}

// heldOp starts a checkpoint of j1, waits until both VMs' gated step is
// out, and returns its ID (from the operation list) and its outcome.
func heldOp(t *testing.T, cl *Client, g *gatedHostd) (string, <-chan opOut) {
	done := make(chan opOut, 1)
	go func() {
		res, err := cl.Checkpoint(context.Background(), "j1", CheckpointOptions{}, nil)
		done <- opOut{res, err}
	}()
	<-g.held
	<-g.held
	views, err := cl.Operations(context.Background())
	if err != nil || len(views) != 1 || !views[0].Running || views[0].Job != "j1" {
		t.Fatalf("operations while one runs: %+v %v", views, err)
	}
	return views[0].ID, done
}

// watch follows id and returns once the watcher has its first view.
func watch(t *testing.T, cl *Client, id string) (first OpView, end <-chan opView) {
	got := make(chan OpView, 64)
	ch := make(chan opView, 1)
	go func() {
		v, err := cl.WatchOperation(context.Background(), id, func(v OpView) { got <- v })
		ch <- opView{v, err}
	}()
	return <-got, ch
}

type opView struct {
	v   OpView
	err error
}

// Cancelled while both guests prepare (before the commit point), a
// checkpoint rolls back: the cancel says so, the checkpoint's own caller
// and a watcher get its rolled-back error, the hostds got Aborts, and a
// second cancel finds nothing to cancel.
func TestOpsAPICancelBeforeCommit(t *testing.T) {
	cl, g := opsAPI(t, hostd.StepPrepare)
	id, done := heldOp(t, cl, g)
	first, end := watch(t, cl, id)
	if first.Phase != string(machine.PhasePrepare) || len(first.VMs) != 2 || !first.VMs[0].Pending || first.VMs[0].Step != machine.Prepare {
		t.Fatalf("first view: %+v", first)
	}
	if v, err := cl.Operation(context.Background(), id); err != nil || !v.Running || v.Committed || v.Deadline.IsZero() {
		t.Fatalf("show: %+v %v", v, err)
	}
	rep, err := cl.CancelOperation(context.Background(), id, "test")
	if err != nil || rep.Effect != CancelRolledBack || rep.View.Result == nil || rep.View.Result.Reason != "cancelled: test" {
		t.Fatalf("cancel in prepare: %+v %v", rep, err)
	}
	out := <-done
	if !errors.Is(out.err, ErrFailed) || out.res.Outcome != machine.OutcomeAborted || out.res.Checkpoint != machine.CheckpointFailed {
		t.Fatalf("the cancelled checkpoint: %+v %v", out.res, out.err)
	}
	w := <-end
	if !errors.Is(w.err, ErrFailed) || w.v.Running || w.v.Result == nil || w.v.Result.Outcome != machine.OutcomeAborted {
		t.Fatalf("watch: %+v %v", w.v, w.err)
	}
	g.mu.Lock()
	sent := strings.Join(g.sent, " ")
	g.mu.Unlock()
	if !strings.Contains(sent, hostd.StepAbort+"/a") || !strings.Contains(sent, hostd.StepAbort+"/b") || strings.Contains(sent, hostd.StepDetach) {
		t.Fatalf("steps sent: %s", sent)
	}
	if rep, err := cl.CancelOperation(context.Background(), id, ""); err != nil || rep.Effect != CancelNothing {
		t.Fatalf("a second cancel: %+v %v", rep, err)
	}
	if _, err := cl.CancelOperation(context.Background(), "op-nope", ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel of no operation: %v", err)
	}
}

// Cancelled once every VM is saved (the commit point passed; Attach is
// out), a checkpoint finishes complete and the cancel says so.
func TestOpsAPICancelAfterCommit(t *testing.T) {
	cl, g := opsAPI(t, hostd.StepAttach)
	id, done := heldOp(t, cl, g)
	cancel := make(chan CancelReply, 1)
	go func() {
		rep, err := cl.CancelOperation(context.Background(), id, "")
		if err != nil {
			t.Errorf("cancel: %v", err)
		}
		cancel <- rep
	}()
	// The cancel is queued at once; the driver, waiting for Attach, steps
	// it (whenever it does, the operation is past its commit point).
	time.Sleep(200 * time.Millisecond)
	g.release()
	rep := <-cancel
	if rep.Effect != CancelFinished || rep.View.Result == nil || rep.View.Result.Checkpoint != machine.CheckpointComplete ||
		!strings.Contains(rep.Message, "past its commit point") {
		t.Fatalf("cancel past the commit point: %+v", rep)
	}
	if out := <-done; out.err != nil || out.res.Outcome != machine.OutcomeCheckpointed {
		t.Fatalf("the checkpoint: %+v %v", out.res, out.err)
	}
}

package coord

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
)

// stubHost answers a hostd's API: every VM is stopped, every step succeeds;
// it records the VMs stopped and the steps asked.
type stubHost struct {
	list    string // GET /v1/vms (default: none)
	mu      sync.Mutex
	stopped []string
	steps   []string
}

func (s *stubHost) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, _ *http.Request) {
		if s.list == "" {
			s.list = "[]"
		}
		w.Write([]byte(s.list))
	})
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(hostd.VMInfo{Name: r.PathValue("name"), State: "stopped"})
	})
	mux.HandleFunc("POST /v1/vms/{name}/stop", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.stopped = append(s.stopped, r.PathValue("name"))
		s.mu.Unlock()
		json.NewEncoder(w).Encode(hostd.VMInfo{Name: r.PathValue("name"), State: "stopped"})
	})
	mux.HandleFunc("POST /v1/steps", func(w http.ResponseWriter, r *http.Request) {
		var req hostd.StepRequest
		json.NewDecoder(r.Body).Decode(&req)
		s.mu.Lock()
		s.steps = append(s.steps, req.Kind+"/"+req.VM)
		s.mu.Unlock()
		json.NewEncoder(w).Encode(hostd.StepResult{OK: true, Digest: "sha256:00"})
	})
	mux.HandleFunc("POST /v1/leases/renew", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"renewed":1}`)) })
	return mux
}

// deadAddr is an address nothing listens on.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// Evacuating a host that is down (with a host that is up, in one command)
// cordons both; the job with a VM on the down host is restarted from its
// newest complete checkpoint on a host that is neither evacuated nor
// cordoned, after its VM still running elsewhere was stopped; the result
// gives the outcome per VM. A cordoned host then refuses a job and a
// migration, and a restart puts its VM elsewhere; once uncordoned it takes
// them.
func TestEvacuateDownHostRestartsFromCheckpointAndCordons(t *testing.T) {
	// h1 is the most loaded: only the cordon keeps the restart off h4.
	up := map[string]*stubHost{"h1": {list: `[{"name":"x","state":"running"}]`}, "h3": {}, "h4": {}}
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range up {
		srv := httptest.NewServer(s.handler())
		t.Cleanup(srv.Close)
		st.Put(bucketHosts, name, Host{Name: name, Addr: strings.TrimPrefix(srv.URL, "http://")})
	}
	st.Put(bucketHosts, "h2", Host{Name: "h2", Addr: deadAddr(t)})
	st.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}, {Name: "vm2", Host: "h2"}}})
	now := time.Now().UTC()
	cks := []Checkpoint{
		{ID: "ck-old", Job: "j1", Status: "complete", CreatedAt: now.Add(-2 * time.Hour)},
		{ID: "ck-new", Job: "j1", Status: "complete", CreatedAt: now.Add(-time.Hour)},
		{ID: "ck-failed", Job: "j1", Status: "failed", CreatedAt: now.Add(-time.Minute)},
	}
	for _, ck := range cks {
		ck.VMs = []CheckpointVM{{Name: "vm1", Host: "h1", Dir: "/ck/" + ck.ID + "/vm1"}, {Name: "vm2", Host: "h2", Dir: "/ck/" + ck.ID + "/vm2"}}
		st.Put(bucketCheckpoints, ck.ID, ck)
	}
	st.Close()
	c, err := New(Config{StateDir: dir, CheckpointDir: "/ck", Lease: 3 * time.Second, StepTimeout: 5 * time.Second,
		TransferTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.CordonHost("h4", "maintenance"); err != nil {
		t.Fatal(err)
	}

	res, err := c.Evacuate(ctx, []string{"h2", "h3"}, true, nil)
	if err != nil || len(res) != 1 {
		t.Fatalf("evacuate h2 (down), h3: %v %+v", err, res)
	}
	r := res[0]
	if r.Kind != machine.KindRestart || r.Outcome != machine.OutcomeRestored || r.CheckpointID != "ck-new" {
		t.Errorf("the job of the down host: %+v, want restored from ck-new", r)
	}
	for _, v := range r.VMs {
		if v.Outcome != machine.OutcomeRestored || v.Host != "h1" {
			t.Errorf("vm %s: %s on %s, want restored on h1 (h2 down, h3 evacuated, h4 cordoned)", v.Name, v.Outcome, v.Host)
		}
	}
	if j, _ := c.Job("j1"); j.VMs[1].Host != "h1" {
		t.Errorf("the job's placement: %+v", j.VMs)
	}
	if !slices.Contains(up["h1"].stopped, "vm1") {
		t.Errorf("vm1 was not stopped before its job's restart: %v", up["h1"].stopped)
	}
	infos, _ := c.HostInfos()
	for _, hi := range infos {
		if want := hi.Name != "h1"; (hi.Cordoned != nil) != want {
			t.Errorf("host %s cordoned: %+v, want %v", hi.Name, hi.Cordoned, want)
		}
	}

	// The cordoned hosts take no new VM.
	_, err = c.CreateJob(ctx, Job{Name: "j2", VMs: []JobVM{{Name: "vm9", Host: "h3"}}})
	if !errors.Is(err, ErrCordoned) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "symvirt hosts uncordon h3") {
		t.Errorf("a job on a cordoned host: %v", err)
	}
	if _, err := c.Migrate(ctx, "vm1", MigrateOptions{To: []string{"h4"}}, nil); !errors.Is(err, ErrCordoned) ||
		!strings.Contains(err.Error(), "maintenance") {
		t.Errorf("a migration to a cordoned host: %v", err)
	}
	c.store.Put(bucketCheckpoints, "ck-h3", Checkpoint{ID: "ck-h3", Job: "j1", Status: "complete", CreatedAt: now,
		VMs: []CheckpointVM{{Name: "vm1", Host: "h3", Dir: "/ck/ck-h3/vm1"}, {Name: "vm2", Host: "h1", Dir: "/ck/ck-h3/vm2"}}})
	// A restart from a cut taken on h3 (cordoned) restores its VM elsewhere.
	r, err = c.Restart(ctx, "j1", RestartOptions{Checkpoint: "ck-h3"}, nil)
	if err != nil || r.Outcome != machine.OutcomeRestored {
		t.Fatalf("restart from a cut on a cordoned host: %v %+v", err, r)
	}
	if j, _ := c.Job("j1"); j.VMs[0].Host != "h1" {
		t.Errorf("vm1 of a cut on cordoned h3 restored on %s, want h1", j.VMs[0].Host)
	}
	if err := c.UncordonHost("h3"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateJob(ctx, Job{Name: "j2", VMs: []JobVM{{Name: "vm9", Host: "h3"}}}); err != nil {
		t.Errorf("a job on an uncordoned host: %v", err)
	}
	// Evacuating h3 (up) migrates vm9 to h1, the one host neither down nor
	// cordoned, though the most loaded.
	res, err = c.Evacuate(ctx, []string{"h3"}, true, nil)
	if err != nil || len(res) != 1 || res[0].Kind != machine.KindEvacuate || res[0].Outcome != machine.OutcomeMigrated {
		t.Fatalf("evacuate h3: %v %+v", err, res)
	}
	if j, _ := c.Job("j2"); j.VMs[0].Host != "h1" {
		t.Errorf("vm9 evacuated to %s, want h1", j.VMs[0].Host)
	}
}

// A job that lost a VM with its host and has no complete checkpoint
// cannot be restarted: the result says which VM is lost, the error needs
// an operator, and the job's other VMs are left running.
func TestEvacuateDownHostWithoutCheckpoint(t *testing.T) {
	h1 := &stubHost{}
	srv := httptest.NewServer(h1.handler())
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Put(bucketHosts, "h1", Host{Name: "h1", Addr: strings.TrimPrefix(srv.URL, "http://")})
	st.Put(bucketHosts, "h2", Host{Name: "h2", Addr: deadAddr(t)})
	st.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}, {Name: "vm2", Host: "h2"}}})
	st.Put(bucketCheckpoints, "ck-failed", Checkpoint{ID: "ck-failed", Job: "j1", Status: "failed"})
	st.Close()
	c, err := New(Config{StateDir: dir, CheckpointDir: "/ck", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	res, err := c.Evacuate(context.Background(), []string{"h2"}, true, nil)
	if !errors.Is(err, ErrNeedsOperator) || len(res) != 1 || !slices.Equal(res[0].Lost, []string{"vm2"}) {
		t.Fatalf("evacuate of a down host, no checkpoint: %v %+v", err, res)
	}
	if len(h1.stopped) != 0 {
		t.Errorf("vm1 was stopped although its job cannot restart: %v", h1.stopped)
	}
	for _, v := range res[0].VMs {
		if want := map[string]string{"vm1": "aborted", "vm2": "lost"}[v.Name]; v.Outcome != want {
			t.Errorf("vm %s: %s, want %s", v.Name, v.Outcome, want)
		}
	}
}

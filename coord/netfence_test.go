package coord

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
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

// fenceHost answers a hostd's API for a live checkpoint: every step
// succeeds; it serves its VMs' specs and records each fence step's args.
type fenceHost struct {
	specs  map[string]hostd.Spec
	mu     sync.Mutex
	fences map[string]*hostd.FenceArgs // vm -> its fence step's args
}

func (s *fenceHost) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		spec, ok := s.specs[r.PathValue("name")]
		if !ok {
			http.Error(w, `{"error":"no such vm","code":"not_found"}`, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(hostd.VMInfo{Name: spec.Name, State: "running", Spec: spec})
	})
	mux.HandleFunc("POST /v1/steps", func(w http.ResponseWriter, r *http.Request) {
		var req hostd.StepRequest
		json.NewDecoder(r.Body).Decode(&req)
		if req.Kind == hostd.StepFence {
			s.mu.Lock()
			s.fences[req.VM] = req.Fence
			s.mu.Unlock()
		}
		json.NewEncoder(w).Encode(hostd.StepResult{OK: true, Digest: "sha256:00", SnapshotAt: time.Now()})
	})
	mux.HandleFunc("POST /v1/leases/renew", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"renewed":1}`)) })
	return mux
}

func (s *fenceHost) fenced() map[string]*hostd.FenceArgs {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.fences
	s.fences = map[string]*hostd.FenceArgs{}
	return out
}

func nic(id, mac string, passthrough bool) hostd.NIC {
	return hostd.NIC{ID: id, MAC: mac, Passthrough: passthrough, Backend: "tap", Tap: "t" + id}
}

// fenceCluster: a coordinator over two stub hosts, h1 running vm1 and vm3,
// h2 running vm2; vm1's spec is in the job, vm2's and vm3's only on their
// hosts.
func fenceCluster(t *testing.T, vm2NICs []hostd.NIC) (*Coord, *fenceHost) {
	t.Helper()
	host := &fenceHost{fences: map[string]*hostd.FenceArgs{}, specs: map[string]hostd.Spec{
		"vm2": {Name: "vm2", NICs: vm2NICs},
		"vm3": {Name: "vm3", NICs: []hostd.NIC{nic("n0", "52:54:00:00:03:01", false)}},
	}}
	srv := httptest.NewServer(host.handler())
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"h1", "h2"} {
		st.Put(bucketHosts, h, Host{Name: h, Addr: strings.TrimPrefix(srv.URL, "http://")})
	}
	vm1 := &hostd.Spec{Name: "vm1", NICs: []hostd.NIC{nic("pt0", "", true), nic("n0", "52:54:00:00:01:01", false),
		nic("n1", "52:54:00:00:01:02", false)}}
	st.Put(bucketJobs, "j", Job{Name: "j", NetworkFence: FenceJob,
		VMs: []JobVM{{Name: "vm1", Host: "h1", Spec: vm1}, {Name: "vm2", Host: "h2"}, {Name: "vm3", Host: "h1"}}})
	st.Close()
	c, err := New(Config{StateDir: dir, CheckpointDir: t.TempDir(), Lease: 3 * time.Second, StepTimeout: 5 * time.Second,
		TransferTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, host
}

// A live checkpoint of a job with network_fence: job fences each VM
// against the MACs of every other VM's NICs, passthrough ones left out
// (the job's spec for vm1, the hostds' for the others); the scope and MACs
// are journaled with the operation. --network-fence all overrides it.
func TestLiveCheckpointFencesEachVMAgainstTheOthers(t *testing.T) {
	c, host := fenceCluster(t, []hostd.NIC{nic("n0", "52:54:00:00:02:01", false), nic("pt1", "02:00:00:00:00:09", true)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Checkpoint(ctx, "j", CheckpointOptions{Live: true}, nil)
	if err != nil {
		t.Fatalf("checkpoint: %v %+v", err, res)
	}
	want := map[string][]string{
		"vm1": {"52:54:00:00:02:01", "52:54:00:00:03:01"},
		"vm2": {"52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:03:01"},
		"vm3": {"52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:02:01"},
	}
	got := host.fenced()
	for vm, peers := range want {
		if got[vm] == nil || !slices.Equal(got[vm].Peers, peers) {
			t.Errorf("%s fenced against %+v, want %v", vm, got[vm], peers)
		}
	}
	for _, v := range res.VMs {
		if v.Note != "" {
			t.Errorf("%s: note %q, want none", v.Name, v.Note)
		}
	}
	var rec OpRecord
	if err := c.store.Get(bucketOps, res.Op, &rec); err != nil || rec.Fence == nil || rec.Fence.Scope != FenceJob ||
		len(rec.Fence.MACs) != 3 {
		t.Errorf("journaled fence: %v %+v", err, rec.Fence)
	}
	if v, err := c.OpView(res.Op); err != nil || v.NetworkFence != FenceJob || v.FenceFallback != "" {
		t.Errorf("ops show: network fence %q, fallback %q (%v); want job, none", v.NetworkFence, v.FenceFallback, err)
	}

	res, err = c.Checkpoint(ctx, "j", CheckpointOptions{Live: true, NetworkFence: FenceAll}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.OpView(res.Op); err != nil || v.NetworkFence != FenceAll {
		t.Errorf("ops show under --network-fence all: network fence %q (%v)", v.NetworkFence, err)
	}
	for vm, f := range host.fenced() {
		if f != nil {
			t.Errorf("%s: fence %+v under --network-fence all, want the whole VM's", vm, f)
		}
	}
}

// A NIC without a MAC (QEMU would give it its default, the same in every
// VM) or a VM whose hostd cannot say make the whole operation fall back to
// whole-VM fences, every VM's result saying why.
func TestJobFenceFallsBackToTheWholeVM(t *testing.T) {
	for name, tc := range map[string]struct {
		nics []hostd.NIC
		why  string
	}{
		"no mac":     {[]hostd.NIC{nic("n0", "", false)}, "vm vm2 nic n0 has no mac"},
		"shared mac": {[]hostd.NIC{nic("n0", "52:54:00:00:03:01", false)}, "mac 52:54:00:00:03:01 is also vm vm2 nic n0's"},
		"no spec":    {nil, "no spec for vm vm2 on h2"},
	} {
		t.Run(name, func(t *testing.T) {
			c, host := fenceCluster(t, tc.nics)
			if tc.nics == nil {
				delete(host.specs, "vm2")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := c.Checkpoint(ctx, "j", CheckpointOptions{Live: true}, nil)
			if err != nil {
				t.Fatalf("checkpoint: %v %+v", err, res)
			}
			got := host.fenced()
			if len(got) != 3 {
				t.Fatalf("fence steps: %v", got)
			}
			for vm, f := range got {
				if f != nil {
					t.Errorf("%s fenced against %v, want the whole VM", vm, f.Peers)
				}
			}
			for _, v := range res.VMs {
				if !strings.Contains(v.Note, "network fence: the whole VM's") || !strings.Contains(v.Note, tc.why) {
					t.Errorf("%s: note %q, want the fallback and %q", v.Name, v.Note, tc.why)
				}
			}
			if v, err := c.OpView(res.Op); err != nil || v.NetworkFence != FenceJob || !strings.Contains(v.FenceFallback, tc.why) {
				t.Errorf("ops show: network fence %q, fallback %q (%v); want job and %q", v.NetworkFence, v.FenceFallback, err, tc.why)
			}
		})
	}
}

// network_fence is checked where a job is made (listed, or clones) and on
// a checkpoint's override: the error names the field and is ErrInvalid.
func TestNetworkFenceValidated(t *testing.T) {
	c, _ := fenceCluster(t, nil)
	ctx := context.Background()
	_, err := c.CreateJob(ctx, Job{Name: "k", NetworkFence: "vms", VMs: []JobVM{{Name: "vm9", Host: "h1"}}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field network_fence") {
		t.Errorf("create with network_fence vms: %v", err)
	}
	_, err = c.CreateJob(ctx, Job{Name: "k", NetworkFence: "vms", Template: "t", Count: 1})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field network_fence") {
		t.Errorf("clone job with network_fence vms: %v", err)
	}
	_, err = c.Checkpoint(ctx, "j", CheckpointOptions{Live: true, NetworkFence: "Job"}, nil)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field network_fence") {
		t.Errorf("checkpoint with network fence Job: %v", err)
	}
	_, err = c.SetSchedule(Schedule{Job: "j", Every: time.Hour, Keep: 1, Options: CheckpointOptions{Live: true, NetworkFence: "jobs"}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field options.network_fence") {
		t.Errorf("schedule with network fence jobs: %v", err)
	}
	for _, ok := range []string{"", FenceAll, FenceJob} {
		if err := validFence("network_fence", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	if _, err := c.CreateJob(ctx, Job{Name: "k", NetworkFence: FenceJob, VMs: []JobVM{{Name: "vm9", Host: "h1"}}}); err != nil {
		t.Errorf("create with network_fence job: %v", err)
	}
	if j, _ := c.Job("k"); j.NetworkFence != FenceJob {
		t.Errorf("job k recorded with network_fence %q", j.NetworkFence)
	}
}

// jobMACs normalises each MAC (QEMU and the guest show lower case) and
// refuses one that is not an Ethernet address.
func TestJobMACs(t *testing.T) {
	m, err := jobMACs(map[string]hostd.Spec{"a": {NICs: []hostd.NIC{nic("n0", "52:54:00:AB:CD:EF", false)}}})
	if err != nil || !slices.Equal(m["a"], []string{"52:54:00:ab:cd:ef"}) {
		t.Errorf("upper case: %v %v", m, err)
	}
	_, err = jobMACs(map[string]hostd.Spec{"a": {NICs: []hostd.NIC{nic("n0", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", false)}}})
	if err == nil || !strings.Contains(err.Error(), "not an Ethernet address") {
		t.Errorf("an InfiniBand address: %v", err)
	}
	var f *OpFence
	if f.peers("a") != nil || f.fallbackNote() != "" {
		t.Error("an operation without a fence record (an older journal) must fence the whole VM, silently")
	}
	one := &OpFence{Scope: FenceJob, MACs: map[string][]string{"a": {"52:54:00:00:00:01"}}}
	if one.peers("a") != nil {
		t.Error("a VM with no other VM to hold frames from must get the whole-VM fence (hostd's empty list)")
	}
}

// A coordinator taking over an operation fences with the scope and MACs
// journaled at its start, not with what it would look up now (here vm2's
// hostd no longer knows its spec: a new look-up would fall back).
func TestTakenOverOperationKeepsItsFence(t *testing.T) {
	c, host := fenceCluster(t, nil)
	delete(host.specs, "vm2")
	vms := []machine.VM{{Name: "vm1", Host: "h1"}, {Name: "vm2", Host: "h2"}}
	op, _, err := machine.New("op-j", machine.KindCheckpoint, "j", vms, machine.Options{CheckpointID: "ck-j", Live: true}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	hosts, _ := c.hostMap()
	fence := &OpFence{Scope: FenceJob, MACs: map[string][]string{"vm1": {"52:54:00:00:01:01"}, "vm2": {"52:54:00:00:02:01"}}}
	c.store.Put(bucketCheckpoints, "ck-j", Checkpoint{ID: "ck-j", Job: "j", Op: op.ID, Status: "in-progress"})
	c.store.Put(bucketOps, op.ID, OpRecord{Op: op, Hosts: hosts, Fence: fence})
	var rec OpRecord // as a coordinator taking over reads it
	if err := c.store.Get(bucketOps, op.ID, &rec); err != nil {
		t.Fatal(err)
	}
	c.recover(&rec)
	c.Wait()
	got := host.fenced()
	if got["vm1"] == nil || !slices.Equal(got["vm1"].Peers, []string{"52:54:00:00:02:01"}) ||
		got["vm2"] == nil || !slices.Equal(got["vm2"].Peers, []string{"52:54:00:00:01:01"}) {
		t.Errorf("fences of the recovered operation: vm1 %+v, vm2 %+v", got["vm1"], got["vm2"])
	}
}

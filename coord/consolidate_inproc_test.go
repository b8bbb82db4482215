package coord

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/coord/placement"
)

// usageStub is a stubHost that also reports its capacity (2 cores, 1 GiB).
func usageStub(t *testing.T, s *stubHost) string {
	mux := s.handler().(*http.ServeMux)
	mux.HandleFunc("GET /v1/host", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"capacity":{"cpu":2,"mem":1073741824}}`))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// vmsJSON is a hostd's VM list: each VM running, using cpu cores and
// 64 MiB.
func vmsJSON(cpu float64, names ...string) string {
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf(`{"name":%q,"state":"running","spec":{"memory":128},"usage":{"cpu":%g,"mem":67108864,"mem_source":"guest","window_s":60}}`, n, cpu))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func newConsolidateCoord(t *testing.T, hosts map[string]*stubHost, jobs ...Job) *Coord {
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range hosts {
		addr := deadAddr(t)
		if s != nil {
			addr = usageStub(t, s)
		}
		st.Put(bucketHosts, name, Host{Name: name, Addr: addr})
	}
	for _, j := range jobs {
		st.Put(bucketJobs, j.Name, j)
	}
	st.Close()
	c, err := New(Config{StateDir: dir, CheckpointDir: "/ck", Lease: 3 * time.Second, StepTimeout: 5 * time.Second,
		TransferTimeout: 5 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The coordinator's view for the planner: capacity from each hostd, each
// VM's usage, the job's anti-affinity group, a host that is down left out
// with its VMs; a dry run moves nothing; --apply
// migrates through the machine (one live migration per job) and the job's
// record follows; the hosts left empty are reported and, with drain,
// cordoned as consolidate's; a host above High turns the next round into
// a scale out, which may take such a host back (uncordoned).
func TestConsolidateGathersPlansAndApplies(t *testing.T) {
	h := map[string]*stubHost{"h1": {list: vmsJSON(0.1, "a1", "a2")}, "h2": {list: vmsJSON(0.1, "b1")}, "h3": nil}
	c := newConsolidateCoord(t, h,
		Job{Name: "a", AntiAffinity: "ga", VMs: []JobVM{{Name: "a1", Host: "h1"}, {Name: "a2", Host: "h1", AntiAffinity: "own"}}},
		Job{Name: "b", VMs: []JobVM{{Name: "b1", Host: "h2"}}},
		Job{Name: "d", VMs: []JobVM{{Name: "d1", Host: "h3"}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	rep, err := c.Consolidate(ctx, ConsolidateOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Mode != "consolidate" || rep.Applied || len(rep.Hosts) != 2 || rep.Skipped["h3"] == "" {
		t.Fatalf("dry run: %+v", rep)
	}
	byName := map[string]int{}
	for i, v := range rep.VMs {
		byName[v.Name] = i
	}
	a1, a2 := rep.VMs[byName["a1"]], rep.VMs[byName["a2"]]
	if a1.AntiAffinity != "ga" || a2.AntiAffinity != "own" || a1.Use.CPU != 0.1 || a1.Use.Mem != 64<<20 || a1.Pinned {
		t.Errorf("vms a1 %+v a2 %+v", a1, a2)
	}
	if _, in := byName["d1"]; in || !slices.Equal(rep.Unplanned, []string{"d1"}) {
		t.Errorf("d1 on a down host planned: %+v, unplanned %v", rep.VMs, rep.Unplanned)
	}
	if rep.Hosts[0].Capacity.CPU != 2 || rep.Hosts[0].Capacity.Mem != 1<<30 {
		t.Errorf("capacity %+v", rep.Hosts[0])
	}
	if len(rep.Plan.Moves) != 1 || rep.Plan.Moves[0].VM != "b1" || rep.Plan.Moves[0].To != "h1" {
		t.Fatalf("plan %+v, want b1 to h1", rep.Plan)
	}

	rep, err = c.Consolidate(ctx, ConsolidateOptions{Apply: true, Drain: true, Parallel: 2}, nil)
	if err != nil || len(rep.Results) != 1 || rep.Results[0].Kind != machine.KindMigrate || rep.Results[0].Outcome != machine.OutcomeMigrated {
		t.Fatalf("apply: %v %+v", err, rep.Results)
	}
	if j, _ := c.Job("b"); j.VMs[0].Host != "h1" {
		t.Errorf("job b after the move: %+v", j.VMs)
	}
	if !slices.Contains(h["h2"].steps, "prepare/b1") {
		t.Errorf("no cooperation round on the source: %v", h["h2"].steps)
	}
	// The stub still lists b1 on h2: only hosts really empty are reported.
	h["h2"].list = "[]"
	rep, err = c.Consolidate(ctx, ConsolidateOptions{Apply: true, Drain: true}, nil)
	if err != nil || !slices.Equal(rep.Empty, []string{"h2"}) || !slices.Equal(rep.Drained, []string{"h2"}) {
		t.Fatalf("second apply: %v empty %v drained %v", err, rep.Empty, rep.Drained)
	}
	if err := c.placeable("x", "h2"); !errors.Is(err, ErrCordoned) {
		t.Errorf("h2 not cordoned: %v", err)
	}

	// h1 now runs hot: the next round scales out, to h2.
	h["h1"].list = vmsJSON(0.7, "a1", "a2", "b1")
	rep, err = c.Consolidate(ctx, ConsolidateOptions{Apply: true}, nil)
	if err != nil || rep.Mode != "scale-out" || len(rep.Plan.Moves) == 0 || !slices.Equal(rep.Uncordoned, []string{"h2"}) {
		t.Fatalf("scale out: %v %+v", err, rep)
	}
	if err := c.placeable("x", "h2"); err != nil {
		t.Errorf("h2 still cordoned after the scale out took it: %v", err)
	}
	if _, err := c.Consolidate(ctx, ConsolidateOptions{Target: 0.9, High: 0.5}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("high below target: %v", err)
	}
}

func TestByWaveAndJob(t *testing.T) {
	moves := []placement.Move{{VM: "a", Job: "j1", Wave: 1}, {VM: "b", Job: "j2", Wave: 0}, {VM: "c", Job: "j1", Wave: 1},
		{VM: "d", Job: "j3", Wave: 3}}
	waves := byWave(moves)
	if len(waves) != 3 || waves[0][0].VM != "b" || len(waves[1]) != 2 || waves[2][0].VM != "d" {
		t.Fatalf("waves %+v", waves)
	}
	if g := byJob(waves[1]); len(g) != 1 || len(g[0]) != 2 {
		t.Fatalf("one job's moves of a wave are one operation: %+v", g)
	}
}

package coord

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
)

// liveFake is a coordinator whose one host is fake, with job j1 of two
// VMs on it.
func liveFake(t *testing.T, fake *fakeHostd, cfg Config) *Coord {
	srv := httptest.NewServer(fake.handler())
	t.Cleanup(srv.Close)
	bolt, err := OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg.CheckpointDir, cfg.Lease = "/ck", time.Second
	c := &Coord{cfg: cfg, store: bolt, log: slog.New(slog.DiscardHandler), busy: map[string]string{}}
	t.Cleanup(func() { c.Close() })
	c.AddHost(Host{Name: "h1", Addr: strings.TrimPrefix(srv.URL, "http://")})
	bolt.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}, {Name: "vm2", Host: "h1"}}})
	return c
}

// A live checkpoint whose streams take longer than a step may (StepTimeout
// 500 ms, each wait-save 3 s, TransferTimeout 30 s): each VM's stream is
// waited for once, by one request, and the checkpoint is complete.
func TestDriverWaitsSlowStreamOnce(t *testing.T) {
	fake := &fakeHostd{slow: map[string]time.Duration{hostd.StepWaitSave: 3 * time.Second}}
	c := liveFake(t, fake, Config{StepTimeout: 500 * time.Millisecond, TransferTimeout: 30 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	res, err := c.Checkpoint(ctx, "j1", CheckpointOptions{Live: true, Bandwidth: 1 << 20}, nil)
	steps, _, _ := fake.snapshot()
	waits := map[string]int{}
	for _, s := range steps {
		if vm, ok := strings.CutPrefix(s, hostd.StepWaitSave+"/"); ok {
			waits[vm]++
		}
	}
	if waits["vm1"] != 1 || waits["vm2"] != 1 {
		t.Fatalf("wait-save requests per vm: %v (want one each); steps: %v", waits, steps)
	}
	if err != nil || res.Checkpoint != machine.CheckpointComplete || res.Error != "" {
		t.Fatalf("live checkpoint with slow streams: %v %+v", err, res)
	}
	if ck, err := c.CheckpointByID(res.CheckpointID); err != nil || ck.Status != machine.CheckpointComplete {
		t.Fatalf("catalog: %+v %v", ck, err)
	}
	// Sent before the catalog says complete, nothing of it is left: no
	// wait-save still out.
	time.Sleep(time.Second)
	if after, _, _ := fake.snapshot(); len(after) != len(steps) {
		t.Fatalf("steps sent after the operation ended: %v", after[len(steps):])
	}
}

// A live stream fails after the job ran on: the checkpoint is failed in
// the result and the catalog, its artifacts are deleted, the VMs were
// checkpointed (they ran on), and the operation says why. Under -race it
// runs the live path's concurrency: wait-saves and the discard answered
// from action goroutines while the driver journals on their answers and
// on deadlines.
func TestDriverLiveStreamFails(t *testing.T) {
	fake := &fakeHostd{slow: map[string]time.Duration{hostd.StepWaitSave: 100 * time.Millisecond,
		hostd.StepDeleteArtifacts: 600 * time.Millisecond}, fail: map[string]string{hostd.StepWaitSave: "stream broken"}}
	c := liveFake(t, fake, Config{StepTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := c.Checkpoint(ctx, "j1", CheckpointOptions{Live: true}, nil)
	if err == nil || !errors.Is(err, ErrFailed) || res.Checkpoint != machine.CheckpointFailed ||
		res.Outcome != machine.OutcomeCheckpointed || !strings.Contains(res.Reason, "stream broken") {
		t.Fatalf("live checkpoint whose stream failed: %v %+v", err, res)
	}
	if ck, err := c.CheckpointByID(res.CheckpointID); err != nil || ck.Status != machine.CheckpointFailed {
		t.Fatalf("catalog: %+v %v", ck, err)
	}
	steps, _, _ := fake.snapshot()
	for _, vm := range []string{"vm1", "vm2"} {
		if !slices.Contains(steps, hostd.StepDeleteArtifacts+"/"+vm) {
			t.Errorf("%s's partial checkpoint was not deleted: %v", vm, steps)
		}
	}
	// The job is free again.
	fake.mu.Lock()
	delete(fake.fail, hostd.StepWaitSave)
	fake.mu.Unlock()
	if res, err := c.Checkpoint(ctx, "j1", CheckpointOptions{Live: true}, nil); err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("the next live checkpoint: %v %+v", err, res)
	}
}

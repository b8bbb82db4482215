package coord

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
)

// A live checkpoint whose streams take longer than a step may (StepTimeout
// 500 ms, each wait-save 3 s, TransferTimeout 30 s): each VM's stream is
// waited for once, by one request, and the checkpoint is complete.
func TestLiveCheckpointSlowStreamWaitedOnce(t *testing.T) {
	fake := &fakeHostd{slow: map[string]time.Duration{hostd.StepWaitSave: 3 * time.Second}}
	srv := httptest.NewServer(fake.handler())
	t.Cleanup(srv.Close)
	bolt, err := OpenBolt(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &Coord{cfg: Config{CheckpointDir: "/ck", Lease: time.Second, StepTimeout: 500 * time.Millisecond,
		TransferTimeout: 30 * time.Second}, store: bolt, log: slog.New(slog.DiscardHandler), busy: map[string]string{}}
	t.Cleanup(func() { c.Close() })
	c.AddHost(Host{Name: "h1", Addr: strings.TrimPrefix(srv.URL, "http://")})
	bolt.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}, {Name: "vm2", Host: "h1"}}})
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

package coord

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// A coordinator that died in the middle of two jobs' checkpoints left them
// in its journal; the next one finishes them at start and then frees the
// jobs: a second operation on each runs.
func TestRecoveredOperationReleasesItsJob(t *testing.T) {
	fake := &fakeHostd{}
	srv := httptest.NewServer(fake.handler())
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Put(bucketHosts, "h1", Host{Name: "h1", Addr: addr})
	jobs := []string{"j1", "j2"}
	for _, j := range jobs {
		vms := []machine.VM{{Name: j + "vm", Host: "h1"}}
		st.Put(bucketJobs, j, Job{Name: j, VMs: []JobVM{{Name: vms[0].Name, Host: "h1"}}})
		op, _, err := machine.New("op-"+j, machine.KindCheckpoint, j, vms, machine.Options{CheckpointID: "ck-" + j}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		st.Put(bucketCheckpoints, "ck-"+j, Checkpoint{ID: "ck-" + j, Job: j, Op: op.ID, Status: "in-progress"})
		st.Put(bucketOps, op.ID, OpRecord{Op: op, Hosts: map[string]string{"h1": addr}})
	}
	st.Close()

	c, err := New(Config{StateDir: dir, CheckpointDir: "/ck", Lease: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, j := range jobs {
		if ck, err := c.CheckpointByID("ck-" + j); err != nil || ck.Status != machine.CheckpointComplete {
			t.Fatalf("the recovered checkpoint of %s: %+v %v", j, ck, err)
		}
		if res, err := c.Checkpoint(ctx, j, CheckpointOptions{}, nil); err != nil || res.Checkpoint != machine.CheckpointComplete {
			t.Fatalf("a checkpoint of %s after its recovered operation: %v %+v", j, err, res)
		}
	}
}

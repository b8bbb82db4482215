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

// A coordinator that died in the middle of a checkpoint left it in its
// journal; the next one finishes it at start and then frees the job: a
// second operation on it runs.
func TestRecoveredOperationReleasesItsJob(t *testing.T) {
	fake := &fakeHostd{}
	srv := httptest.NewServer(fake.handler())
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	st, err := OpenBolt(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Put(bucketHosts, "h1", Host{Name: "h1", Addr: strings.TrimPrefix(srv.URL, "http://")})
	st.Put(bucketJobs, "j1", Job{Name: "j1", VMs: []JobVM{{Name: "vm1", Host: "h1"}}})
	op, _, err := machine.New("op-left", machine.KindCheckpoint, "j1", []machine.VM{{Name: "vm1", Host: "h1"}},
		machine.Options{CheckpointID: "ck-left"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	st.Put(bucketCheckpoints, "ck-left", Checkpoint{ID: "ck-left", Job: "j1", Op: op.ID, Status: "in-progress"})
	st.Put(bucketOps, op.ID, OpRecord{Op: op, Hosts: map[string]string{"h1": strings.TrimPrefix(srv.URL, "http://")}})
	st.Close()

	c, err := New(Config{StateDir: dir, CheckpointDir: "/ck", Lease: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Wait()
	if ck, err := c.CheckpointByID("ck-left"); err != nil || ck.Status != machine.CheckpointComplete {
		t.Fatalf("the recovered checkpoint: %+v %v", ck, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if res, err := c.Checkpoint(ctx, "j1", CheckpointOptions{}, nil); err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("a checkpoint of the job after its recovered operation: %v %+v", err, res)
	}
}

package coord_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The coordinator's disk fills up in the middle of a job checkpoint (its
// state dir is a small tmpfs the test fills while the guests prepare):
// the coordinator stops the operation, says "journal write failed: ...
// no space left on device" in the CLI's error and at level error in its
// log, sends no further action and renews no lease, so each hostd undoes
// the guest round when its lease runs out: the VMs run on untouched and
// their applications are told the operation was aborted. A new operation
// is refused while the disk is full; with room again the next checkpoint
// completes.
func TestCoordJournalDiskFullStopsOperation(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	c := newClusterWith(t, clusterOpts{coordDir: dir})
	since := startJob(t, c, " symvirt.slow=1")
	// A host entry of 96 KiB makes every journal record of the operation
	// (it carries the host map) a run of pages bbolt has no free copy of,
	// so the first write after the disk fills must grow the file: bbolt
	// rewrites small records into pages it already owns, which a full
	// disk does not stop.
	c.cli("hosts", "add", "pad", "unix:/"+strings.Repeat("p", 96<<10))
	done := c.opAsync("checkpoint", "jf")
	waitFile(t, c.serial("b", "vm2"), `"PREPARE"`)
	filler := filepath.Join(dir, "filler")
	fill(t, filler)

	r := <-done
	t.Logf("checkpoint: %v\n%s", r.err, r.out)
	if r.err == nil || !strings.Contains(r.out, "journal write failed: ") || !strings.Contains(r.out, "no space left on device") {
		t.Fatalf("a checkpoint whose journal cannot be written: %v\n%s", r.err, r.out)
	}
	if !strings.Contains(c.coord.Logs(), `"level":"ERROR","msg":"journal write failed`) {
		t.Fatalf("the coordinator did not log the journal failure at level error")
	}
	// The leases run out (8 s) and each hostd ends the guest round.
	for vm, host := range c.where("jf") {
		waitFile(t, c.serial(host, vm), `hook: outcome aborted`)
	}
	assertUntouched(t, c, since)

	// New work is refused while the journal cannot be written (the job
	// itself stays busy until the leases have run out: retried past it).
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, out, err := c.op("checkpoint", "jf")
		if err != nil && strings.Contains(out, "journal write failed") {
			break
		}
		if err == nil || !strings.Contains(out, "in progress") || time.Now().After(deadline) {
			t.Fatalf("a checkpoint while the coordinator's disk is full: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	os.Remove(filler)
	if res, out, err := c.op("checkpoint", "jf"); err != nil || res.Checkpoint != "complete" {
		t.Fatalf("the checkpoint once there is room again: %v\n%s", err, out)
	}
	assertUntouched(t, c, c.traffic("a"))
}

// fill writes path until the file system is full.
func fill(t *testing.T, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	small := make([]byte, 512)
	for {
		if _, err := f.Write(small); err != nil {
			t.Logf("coordinator's disk full: %v", err)
			return
		}
	}
}

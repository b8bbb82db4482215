package coord_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testguest"
)

// waitDiskChecks waits for more good checks of the guest's disk in log
// past offset from, failing on a bad one; it returns the log's length.
func waitDiskChecks(t *testing.T, log string, from, more int) int {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		data, _ := os.ReadFile(log)
		tail := data[min(from, len(data)):]
		if i := strings.Index(string(tail), "symvirt-pattern-BAD"); i >= 0 {
			t.Fatalf("the guest found its disk pattern broken: %s", strings.SplitN(string(tail[i:]), "\n", 2)[0])
		}
		if len(testguest.DiskPatternOK.FindAll(tail, -1)) >= more {
			return len(data)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d disk checks since offset %d, want %d", log, len(testguest.DiskPatternOK.FindAll(tail, -1)), from, more)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestJobDiskCheckpointsRemoveMiddle: a job's VM with a 2 GiB qcow2 disk
// its guest keeps writing a checked pattern to: three live checkpoints
// through the coordinator (the 2nd and 3rd store only what changed),
// `symvirt checkpoints rm` of the middle one, and restarts of the job
// from the 3rd and the 1st with the pattern intact.
func TestJobDiskCheckpointsRemoveMiddle(t *testing.T) {
	c := newCluster(t)
	disks := t.TempDir()
	img := filepath.Join(disks, "vm1.qcow2")
	for _, args := range [][]string{{"qemu-img", "create", "-q", "-f", "qcow2", img, "2G"},
		{"qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 16M 128M", img}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	initrd := testguest.Initrd(t, map[string]testguest.File{"/etc/symvirt/rc.d/30-pattern": {Mode: 0o755, Data: []byte(testguest.DiskPatternScript(64))}})
	job := fmt.Sprintf(`name: jd
vms:
  - name: vm1
    host: a
    spec:
      memory: 128M
      kernel: %s
      initrd: %s
      append: "console=ttyS0 quiet panic=-1"
      disks:
        - {id: d0, path: %s, format: qcow2}
`, c.kernel, initrd, img)
	f := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(f, []byte(job), 0o600)
	c.cli("jobs", "create", "-f", f)
	log := c.serial("a", "vm1")
	off := waitDiskChecks(t, log, 0, 2)

	var ids []string
	var sizes []int64
	for i := 1; i <= 3; i++ {
		res, out, err := c.op("checkpoint", "jd")
		if err != nil || res.Checkpoint != machine.CheckpointComplete {
			t.Fatalf("checkpoint %d: %v\n%s", i, err, out)
		}
		ids = append(ids, res.CheckpointID)
		sizes = append(sizes, diskSize(t, filepath.Join(c.ckDir, res.CheckpointID, "vm1")))
		t.Logf("checkpoint %d (%s): disk stored %d bytes", i, res.CheckpointID, sizes[i-1])
		off = waitDiskChecks(t, log, off, 2)
	}
	for i := 1; i < 3; i++ {
		if sizes[i]*4 > sizes[0] {
			t.Errorf("checkpoint %d stores %d bytes, not much less than the first's %d", i+1, sizes[i], sizes[0])
		}
	}
	t.Logf("%s", c.cli("checkpoints", "rm", ids[1]))
	if _, err := os.Stat(filepath.Join(c.ckDir, ids[1])); err == nil {
		if entries, _ := os.ReadDir(filepath.Join(c.ckDir, ids[1])); len(entries) != 0 {
			t.Fatalf("the removed checkpoint's files are still there: %v", entries)
		}
	}
	for _, id := range []string{ids[2], ids[0]} {
		c.killAll("jd")
		data, _ := os.ReadFile(log)
		if res, out, err := c.op("restart", "jd", "--checkpoint", id); err != nil || res.Outcome != machine.OutcomeRestored {
			t.Fatalf("restart from %s: %v\n%s", id, err, out)
		}
		waitDiskChecks(t, log, len(data), 2)
		t.Logf("restarted from %s: the pattern is intact", id)
	}
}

// diskSize is the size of the disk file in a checkpoint directory.
func diskSize(t *testing.T, dir string) int64 {
	t.Helper()
	st, err := os.Stat(filepath.Join(dir, "disk-d0.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

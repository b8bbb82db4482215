package hostd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// diskHostd is a hostd whose disks live in their own directory.
func diskHostd(t *testing.T) (*testenv.Hostd, string) {
	disks := t.TempDir()
	var q []string
	for _, d := range append(testenv.PolicyDirs(t), disks) {
		q = append(q, strconv.Quote(d))
	}
	list := strings.Join(q, ", ")
	cfg := fmt.Sprintf("\npolicy: {image_dirs: [%s], disk_dirs: [%s], qemu_dirs: [%s]}\n", list, list, list)
	return testenv.StartHostd(t, "a", nil, "", cfg), disks
}

// patternSpec is the test guest writing its pattern to a 2 GiB qcow2
// disk (sparse) of which the first 256 MiB hold data.
func patternSpec(t *testing.T, name, disks string) hostd.Spec {
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/30-pattern": {Mode: 0o755, Data: []byte(testguest.DiskPatternScript(128))},
	})
	img := filepath.Join(disks, name+".qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "2G")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 16M 256M", img)
	return hostd.Spec{Name: name, Memory: 128, VCPUs: 1, Kernel: kernel, Initrd: initrd,
		Append: "console=ttyS0 quiet panic=-1 symvirt.name=" + name,
		Disks:  []hostd.Disk{{ID: "d0", Path: img, Format: "qcow2"}}}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// waitPattern waits until the guest has checked its disk min more times
// than it had in seen, and fails on a bad check.
func waitPattern(t *testing.T, log string, seen, more int) int {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		data, _ := os.ReadFile(log)
		if i := strings.Index(string(data), "symvirt-pattern-BAD"); i >= 0 {
			t.Fatalf("the guest found its disk pattern broken: %s", strings.SplitN(string(data[i:]), "\n", 2)[0])
		}
		if n := len(testguest.DiskPatternOK.FindAll(data, -1)); n >= seen+more {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d disk checks, want %d", log, len(testguest.DiskPatternOK.FindAll(data, -1)), seen+more)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func diskFile(t *testing.T, dir string) hostd.FileDigest {
	t.Helper()
	m, err := hostd.VerifyCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := m.File("disk", "d0")
	if !ok {
		t.Fatalf("%s: no disk d0 in %+v", dir, m.Files)
	}
	return f
}

// restoreAndCheck restores the checkpoint as a copy and waits for its
// guest to check its disk twice, then removes the copy.
func restoreAndCheck(t *testing.T, h *testenv.Hostd, dir, name string) {
	t.Helper()
	ctx := ctxT(t, 4*time.Minute)
	c := h.Client()
	if _, err := c.Restore(ctx, hostd.RestoreOptions{Dir: dir, Name: name}, nil); err != nil {
		t.Fatalf("restore %s: %v", dir, err)
	}
	waitPattern(t, serialLog(h, name), 0, 2)
	st := mustStatus(t, c, name)
	t.Logf("restored %s as %s: disk %s, pattern intact", filepath.Base(dir), name, st.Spec.Disks[0].Path)
	if _, err := c.Stop(ctx, name, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st.Spec.Disks[0].Path); err != nil {
		t.Errorf("the restored vm's disk is gone with the vm: %v", err)
	}
}

// TestDiskCheckpointChain: live checkpoints of a VM whose guest keeps
// writing a checked pattern to its 2 GiB qcow2 disk: its disks are cut in
// O(1) (the pause is reported next to a diskless VM's), a checkpoint
// whose disk copy hits a full file system fails, is deleted, and leaves
// the VM running on its overlay; of four checkpoints in a row the 2nd to
// 4th store only what changed; each restores with the pattern intact;
// removing a middle one, then the first, keeps the others restorable; the
// running chain stays short; a tampered link is refused.
func TestDiskCheckpointChain(t *testing.T) {
	h, disks := diskHostd(t)
	c := h.Client()
	ctx := ctxT(t, 20*time.Minute)
	spec := patternSpec(t, "pd1", disks)
	if _, err := c.Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "pd1")
	seen := waitPattern(t, log, 0, 2)

	diskFullFails(t, h, "pd1", log, seen)
	seen = waitPattern(t, log, seen, 1)

	dirs := checkpointsInARow(t, h, "pd1", log, seen, 4)
	chainShort(t, h, "pd1")
	diskless(t, h)
	for i, dir := range dirs {
		restoreAndCheck(t, h, dir, fmt.Sprintf("pr%d", i+1))
	}

	// Removing the middle of a chain: checkpoint 3 takes 2's clusters and
	// links to 1; 4's link follows 3's new digest.
	removeCheckpoint(t, h, "pd1", dirs[1])
	restoreAndCheck(t, h, dirs[3], "pr4b")
	restoreAndCheck(t, h, dirs[2], "pr3b")
	restoreAndCheck(t, h, dirs[0], "pr1b")
	// Removing its root: 3 stands alone.
	removeCheckpoint(t, h, "pd1", dirs[0])
	if f := diskFile(t, dirs[2]); f.Parent != nil {
		t.Fatalf("checkpoint 3 still links to %+v", f.Parent)
	}
	restoreAndCheck(t, h, dirs[3], "pr4c")

	// A link changed under a signed chain: the restore says so, and
	// nothing runs.
	fh, err := os.OpenFile(filepath.Join(dirs[2], diskFile(t, dirs[2]).Name), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte("tampered"), 32<<20)
	fh.Close()
	if _, err := c.Restore(ctx, hostd.RestoreOptions{Dir: dirs[3], Name: "pr4d"}, nil); !errors.Is(err, hostd.ErrChecksum) {
		t.Fatalf("restore over a tampered link: %v, want ErrChecksum", err)
	} else {
		t.Logf("restore over a tampered link refused: %v", err)
	}
}

// checkpointsInARow takes n live checkpoints of the VM: the first stores
// the whole disk, the others only what changed, over the one before.
func checkpointsInARow(t *testing.T, h *testenv.Hostd, vm, log string, seen, n int) []string {
	ctx := ctxT(t, 10*time.Minute)
	root := t.TempDir()
	var dirs []string
	var sizes []int64
	for i := 1; i <= n; i++ {
		dir := filepath.Join(root, fmt.Sprintf("ck%d", i), vm)
		res, err := h.Client().Checkpoint(ctx, vm, hostd.CheckpointOptions{Dir: dir, Live: true}, nil)
		if err != nil {
			t.Fatalf("checkpoint %d: %v", i, err)
		}
		f := diskFile(t, dir)
		t.Logf("checkpoint %d: live %v (fallback %q), pause %v, disk stored %d bytes (parent %v), total %d bytes",
			i, res.Live, res.Fallback, res.Pause, f.Size, f.Parent != nil, res.Bytes)
		if (i == 1) != (f.Parent == nil) {
			t.Errorf("checkpoint %d: parent link %+v", i, f.Parent)
		}
		dirs, sizes = append(dirs, dir), append(sizes, f.Size)
		seen = waitPattern(t, log, seen, 2)
	}
	for i := 1; i < n; i++ {
		if sizes[i]*4 > sizes[0] {
			t.Errorf("checkpoint %d stores %d bytes, not much less than the first's %d", i+1, sizes[i], sizes[0])
		}
	}
	return dirs
}

// removeCheckpoint removes a checkpoint as `symvirt checkpoints rm` does.
func removeCheckpoint(t *testing.T, h *testenv.Hostd, vm, dir string) {
	id := "rm-" + filepath.Base(filepath.Dir(dir))
	res, err := h.Client().Step(ctxT(t, 5*time.Minute), hostd.StepRequest{ID: id, Op: id, Kind: hostd.StepDeleteArtifacts, VM: vm,
		Save: &hostd.SaveArgs{Dir: dir}})
	if err != nil || !res.OK {
		t.Fatalf("remove %s: %v %+v", dir, err, res)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the removed checkpoint is still there: %v", err)
	}
	t.Logf("removed %s", filepath.Base(filepath.Dir(dir)))
}

// diskFullFails: a live checkpoint into a file system too small for the
// disk's copy fails, its directory goes, and the VM runs on its overlay.
func diskFullFails(t *testing.T, h *testenv.Hostd, vm, log string, seen int) {
	ctx := ctxT(t, 5*time.Minute)
	small := t.TempDir()
	// Room for the state (128 MiB of RAM: 193 MiB reserved at the arm)
	// but never for the disk's 256 MiB.
	run(t, "mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", small)
	t.Cleanup(func() { exec.Command("umount", "-l", small).Run() })
	dir := filepath.Join(small, "full")
	_, err := h.Client().Checkpoint(ctx, vm, hostd.CheckpointOptions{Dir: dir, Live: true}, nil)
	if err == nil {
		t.Fatal("a checkpoint whose disk copy cannot fit succeeded")
	}
	t.Logf("checkpoint into a full file system: %v", err)
	if _, serr := os.Stat(dir); !os.IsNotExist(serr) {
		t.Errorf("the failed checkpoint's directory is still there: %v", serr)
	}
	st := mustStatus(t, h.Client(), vm)
	if st.State != "running" || !strings.Contains(st.Spec.Disks[0].Path, ".symvirt-") {
		t.Fatalf("after the failed checkpoint: state %s, disk %s (want running on an overlay)", st.State, st.Spec.Disks[0].Path)
	}
	waitPattern(t, log, seen, 1)
}

// chainShort: once the copies are done the VM's disk is its root and one
// overlay.
func chainShort(t *testing.T, h *testenv.Hostd, vm string) {
	st := mustStatus(t, h.Client(), vm)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := exec.Command("qemu-img", "info", "-U", "--backing-chain", st.Spec.Disks[0].Path).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img info: %v: %s", err, out)
		}
		n := strings.Count(string(out), "image: ")
		if n == 2 {
			t.Logf("the running disk's chain: %d files", n)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running disk's chain stays %d files long: %s", n, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// diskless reports a diskless VM's live checkpoint pause, to compare.
func diskless(t *testing.T, h *testenv.Hostd) {
	ctx := ctxT(t, 4*time.Minute)
	spec := guestSpec(t, "pn1", "")
	spec.NICs, spec.Memory = nil, 128
	c := h.Client()
	if _, err := c.Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, serialLog(h, "pn1"), 3, 90*time.Second)
	res, err := c.Checkpoint(ctx, "pn1", hostd.CheckpointOptions{Dir: filepath.Join(t.TempDir(), "ck"), Live: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("diskless vm: live %v (fallback %q), pause %v", res.Live, res.Fallback, res.Pause)
	c.Stop(context.WithoutCancel(ctx), "pn1", time.Second)
}

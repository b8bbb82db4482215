package disk

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func qemuIO(t *testing.T, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	if out, err := exec.Command("qemu-io", append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %v: %v: %s", cmds, err, out)
	}
}

// content is the whole disk img reads as (raw).
func content(t *testing.T, img string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", img, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStoreChainAndMerge: a disk's layers stored as checkpoints (whole,
// then deltas over the previous one by a relative backing file) read as
// the disk did at each cut, the deltas hold only what changed, and merging
// the middle link into its successor keeps the successor whole.
func TestStoreChainAndMerge(t *testing.T) {
	ctx := context.Background()
	disks, store := t.TempDir(), t.TempDir()
	root := filepath.Join(disks, "root.qcow2")
	if err := run(ctx, "create", "-q", "-f", "qcow2", root, "64M"); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, root, "write -P 1 0 16M")
	// Cut 1: root frozen, o1 active; cut 2: o1 frozen, o2 active.
	o1, o2 := filepath.Join(disks, "o1.qcow2"), filepath.Join(disks, "o2.qcow2")
	run(ctx, "create", "-q", "-f", "qcow2", "-u", "-b", root, "-F", "qcow2", o1, "64M")
	qemuIO(t, o1, "write -P 2 1M 64k")
	run(ctx, "create", "-q", "-f", "qcow2", "-u", "-b", o1, "-F", "qcow2", o2, "64M")
	qemuIO(t, o2, "write -P 3 2M 64k")
	run(ctx, "create", "-q", "-f", "qcow2", "-u", "-b", o2, "-F", "qcow2", filepath.Join(disks, "o3.qcow2"), "64M")
	want := [][]byte{content(t, root), content(t, o1), content(t, o2)}

	var dirs []string
	for i, f := range []string{root, o1, o2} {
		dir := filepath.Join(store, "ck"+string(rune('1'+i)), "vm")
		os.MkdirAll(dir, 0o700)
		parent := ""
		if i > 0 {
			parent = "../../ck" + string(rune('0'+i)) + "/vm/disk-d0.qcow2"
		}
		fd, err := Store(ctx, Frozen{ID: "d0", Path: f, Format: "qcow2"}, filepath.Join(dir, "disk-d0.qcow2"), parent, "qcow2")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("checkpoint %d: %d bytes", i+1, fd.Size)
		if i > 0 && fd.Size*4 > 16<<20 {
			t.Errorf("delta %d is %d bytes", i+1, fd.Size)
		}
		dirs = append(dirs, dir)
	}
	for i, dir := range dirs {
		if got := content(t, filepath.Join(dir, "disk-d0.qcow2")); !bytes.Equal(got, want[i]) {
			t.Errorf("checkpoint %d does not read as the disk at its cut", i+1)
		}
	}
	// Remove checkpoint 2: 3 takes what it read from it, over 1.
	if err := Merge(ctx, filepath.Join(dirs[2], "disk-d0.qcow2"), "../../ck1/vm/disk-d0.qcow2"); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dirs[1])
	if got := content(t, filepath.Join(dirs[2], "disk-d0.qcow2")); !bytes.Equal(got, want[2]) {
		t.Error("checkpoint 3 changed by the merge")
	}
	// And standalone once 1 goes too.
	if err := Merge(ctx, filepath.Join(dirs[2], "disk-d0.qcow2"), ""); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dirs[0])
	if got := content(t, filepath.Join(dirs[2], "disk-d0.qcow2")); !bytes.Equal(got, want[2]) {
		t.Error("checkpoint 3 changed by the second merge")
	}
}

func TestOverlayName(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/d/vm.qcow2", "/d/vm.symvirt-d0-x.qcow2"},
		{"/d/vm.symvirt-d0-a.qcow2", "/d/vm.symvirt-d0-x.qcow2"},
		{"/d/vm.raw", "/d/vm.symvirt-d0-x.qcow2"},
	} {
		if got := overlayName(c.in, "d0", "x"); got != c.want {
			t.Errorf("overlayName(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

package disk

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testguest"
	"github.com/symvirt/symvirt/qmp"
)

// startQEMU runs a QEMU (paused, no guest) with the disk root as qemu/args.go
// puts it on the command line.
func startQEMU(t *testing.T, root string) *qmp.Client {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(testguest.Qemu, "-S", "-machine", "q35", "-display", "none", "-nodefaults",
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-blockdev", "driver=file,node-name=f-d0,filename="+root,
		"-blockdev", "driver=qcow2,node-name=d0,file=f-d0",
		"-device", "virtio-blk-pci,drive=d0,id=dev-d0")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		mon, err := qmp.Dial(ctx, "unix", sock)
		if err == nil {
			t.Cleanup(func() { mon.Close() })
			return mon
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCutAndFlattenQEMU: each cut puts the disk on a new overlay over the
// frozen image; a flatten commits the frozen layers into the root and
// removes their files, so the chain is root <- overlay again.
func TestCutAndFlattenQEMU(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "root.qcow2")
	if err := run(ctx, "create", "-q", "-f", "qcow2", root, "64M"); err != nil {
		t.Fatal(err)
	}
	mon := startQEMU(t, root)
	path := root
	var err error
	for i := 0; i < 3; i++ {
		disks := []Disk{{ID: "d0", Path: path, Format: "qcow2"}}
		var ready []Frozen
		if i == 1 { // the second cut takes an overlay made in advance
			if ready, err = Prepare(ctx, mon, disks); err != nil {
				t.Fatal(err)
			}
		}
		fr, err := Cut(ctx, mon, disks, ready)
		if err != nil {
			t.Fatalf("cut %d: %v", i, err)
		}
		if fr[0].Path != path || (i == 1 && fr[0].Overlay != ready[0].Overlay) {
			t.Fatalf("cut %d froze %s, want %s", i, fr[0].Path, path)
		}
		path = fr[0].Overlay
		if files, err := Chain(ctx, path); err != nil || len(files) != 2+min(i, 1) {
			t.Fatalf("cut %d: chain %v (%v)", i, files, err)
		}
		if err := mon.Cont(ctx); err != nil { // a flatten waits for a running vm
			t.Fatal(err)
		}
		if err := Flatten(ctx, mon, "d0", root, fr[0].Path); err != nil {
			t.Fatalf("flatten %d: %v", i, err)
		}
		files, err := Chain(ctx, path)
		if err != nil || len(files) != 2 || files[1] != root {
			t.Fatalf("after flatten %d: chain %v (%v), want the overlay over %s", i, files, err, root)
		}
		if _, err := os.Stat(fr[0].Path); i > 0 && !os.IsNotExist(err) {
			t.Fatalf("flatten %d left the frozen layer %s: %v", i, fr[0].Path, err)
		}
		if err := mon.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

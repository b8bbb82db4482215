package mpi_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// TestMPIGuestFromDisk boots the MPI guest as users run it, from a qcow2
// overlay on build/guest-mpi/rootfs.qcow2 (boot-initrd.img mounts it), and
// checkpoints it: guestd, started by systemd from the disk, answers the
// round.
func TestMPIGuestFromDisk(t *testing.T) {
	testenv.RequireRoot(t)
	image := mpiImage(t)
	overlay := filepath.Join(t.TempDir(), "disk1.qcow2")
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
		filepath.Join(image, "rootfs.qcow2"), overlay)
	var dirs []string
	for _, d := range append(testenv.PolicyDirs(t), image) {
		dirs = append(dirs, strconv.Quote(d))
	}
	list := strings.Join(dirs, ", ")
	h := testenv.StartHostd(t, "disk", nil, "", fmt.Sprintf("policy: {image_dirs: [%s], disk_dirs: [%s]}\n", list, list))
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	spec := hostd.Spec{
		Name: "disk1", Memory: 768, VCPUs: 1,
		Kernel: filepath.Join(image, "vmlinuz"), Initrd: filepath.Join(image, "boot-initrd.img"),
		Append: "console=ttyS0 quiet panic=-1 root=/dev/vda symvirt.name=disk1",
		Disks:  []hostd.Disk{{ID: "root", Path: overlay}},
		Guest:  hostd.Channel{Type: "virtio-serial"},
	}
	start := time.Now()
	if _, err := h.Client().Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	serial := h.Layout().SerialLog("disk1")
	for !strings.Contains(readFile(serial), "symvirt-guest-ready") {
		if time.Since(start) > 4*time.Minute {
			t.Fatalf("the disk guest is not ready after 4 min:\n%s", tail(readFile(serial), 3000))
		}
		time.Sleep(time.Second)
	}
	t.Logf("the disk guest was ready %.0fs after it started", time.Since(start).Seconds())
	res, err := h.Client().Checkpoint(ctx, "disk1", hostd.CheckpointOptions{Dir: filepath.Join(t.TempDir(), "ck")}, nil)
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if !strings.Contains(h.Logs(), `"msg":"guest ready"`) {
		t.Fatalf("the checkpoint went without guestd's round:\n%s", tail(h.Logs(), 3000))
	}
	t.Logf("checkpoint of the disk guest: %d bytes in %v", res.Bytes, res.Duration.Round(time.Millisecond))
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

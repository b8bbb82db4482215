package hostd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testguest"
)

// A VM on huge pages: its RAM is a file on the hugetlbfs, it runs, takes a
// live checkpoint (snapshot pause from QEMU's events), restores from it,
// and the file goes when the VM stops.
func TestHugePagesVMLiveCheckpoint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: reserves huge pages")
	}
	if !reserveHugePages(t, 300) {
		t.Skip("this kernel gave no huge pages (see the log)")
	}
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h, _ := benchHost(t, "5")
	if _, err := h.Create(Spec{Name: "hp0", Memory: 255, Kernel: kernel, HugePages: true}); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "multiple of 2 MiB") {
		t.Fatalf("odd size on huge pages: %v", err)
	}
	vm, err := h.Create(Spec{Name: "hp1", Memory: 256, Kernel: kernel, Initrd: initrd, Append: "console=ttyS0 quiet symvirt.counter=1", HugePages: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ram := h.ramPath(vm.Spec())
	if !strings.HasPrefix(ram, qemu.HugetlbfsDir()) {
		t.Fatalf("RAM file %s is not on the hugetlbfs %s", ram, qemu.HugetlbfsDir())
	}
	if _, err := os.Stat(ram); err != nil {
		t.Fatal(err)
	}
	serial := filepath.Join(vm.dir, fileSerial)
	waitSerial(t, serial, regexp.MustCompile(`symvirt-counter 3`))
	dir := filepath.Join(t.TempDir(), "ck")
	res, err := vm.Checkpoint(ctx, CheckpointOptions{Dir: dir, NoGuest: true, Live: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Live || res.Pause <= 0 {
		t.Fatalf("not a live checkpoint with a measured pause: %+v", res)
	}
	t.Logf("live checkpoint on huge pages: snapshot pause %s (QEMU: %s), %d bytes in %s", res.Pause, res.Downtime, res.Bytes, res.Duration)
	if err := vm.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ram); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("RAM file left after stop: %v", err)
	}
	h.forget(vm)
	vm2, err := h.Restore(ctx, RestoreOptions{Dir: dir, NoGuest: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.kill()
	if !vm2.Spec().HugePages {
		t.Fatal("restored off huge pages")
	}
	serial = filepath.Join(vm2.dir, fileSerial)
	re := regexp.MustCompile(`symvirt-counter (\d+)`)
	waitSerial(t, serial, re)
	data, _ := os.ReadFile(serial)
	if first, _ := strconv.Atoi(re.FindStringSubmatch(string(data))[1]); first < 3 {
		t.Fatalf("restored guest counts from %d: it booted afresh", first)
	}
}

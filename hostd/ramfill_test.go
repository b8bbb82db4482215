package hostd

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testguest"
	"golang.org/x/sys/unix"
)

// sparseShmFile is a new file of size bytes on /dev/shm, all holes,
// removed at the test's end.
func sparseShmFile(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.CreateTemp(qemu.DefaultShmDir, "symvirt-populate-test-*.ram")
	if err != nil {
		t.Skipf("no %s: %v", qemu.DefaultShmDir, err)
	}
	t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestPopulateFileKeepsDataAndAllocates: populating a sparse RAM file on
// /dev/shm allocates every page (so that QEMU's reads of them no longer
// do) and changes no byte, neither what was written before nor what a
// writer (QEMU's incoming stream) writes while it runs.
func TestPopulateFileKeepsDataAndAllocates(t *testing.T) {
	const size = 3*populateChunk + 4096 // a partial chunk too
	f := sparseShmFile(t, size)
	if allocated(f.Name(), size) {
		t.Fatal("a new file is allocated already: the test shows nothing")
	}
	marks := map[int64][]byte{0: []byte("first"), populateChunk + 100: []byte("middle"), size - 6: []byte("last!!")}
	for off, b := range marks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	// A writer beside it, as QEMU's incoming stream is.
	done := make(chan error, 1)
	during := bytes.Repeat([]byte{0xa5}, 4096)
	go func() {
		var err error
		for off := int64(2 * 4096); off < 64*4096 && err == nil; off += 4096 {
			_, err = f.WriteAt(during, off)
		}
		done <- err
	}()
	n, err := populateFile(context.Background(), f, size)
	if err != nil {
		t.Skipf("populate: %v", err) // a kernel before 5.14
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n != size || !allocated(f.Name(), size) {
		t.Fatalf("populated %d of %d bytes; allocated: %v", n, size, allocated(f.Name(), size))
	}
	for off, b := range marks {
		got := make([]byte, len(b))
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("at %d: %q, want %q (%v)", off, got, b, err)
		}
	}
	got := make([]byte, 4096)
	for off := int64(2 * 4096); off < 64*4096; off += 4096 {
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, during) {
			t.Fatalf("the concurrent write at %d was changed", off)
		}
	}
	zero := make([]byte, 4096)
	if _, err := f.ReadAt(got, 2*populateChunk); err != nil || !bytes.Equal(got, zero) {
		t.Fatalf("a hole reads %x after populate, want zeros", got[:16])
	}
}

// TestPopulateFileStopsWithItsContext: a migration that ends stops it.
func TestPopulateFileStopsWithItsContext(t *testing.T) {
	f := sparseShmFile(t, 4*populateChunk)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := populateFile(ctx, f, 4*populateChunk); n != 0 || err != nil {
		t.Fatalf("populated %d bytes (%v) after its context ended", n, err)
	}
}

// TestPopulateRAMFollowsItsSetting: the VM's RAM file (mapped by its
// "QEMU", here this process) is populated as the host's ram_populate says:
// never by "never"; by an operation (populateRAM, as a live checkpoint's
// arm and a migration call it) under "operation", not once its context
// ended, with no byte changed; beside a new QEMU under "start", but not a
// template's.
func TestPopulateRAMFollowsItsSetting(t *testing.T) {
	kernel, _ := testguest.Paths(t)
	h, err := New(Config{StateDir: t.TempDir(), Policy: testPolicy(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const size = 2*populateChunk + 4096
	on := true
	vmWithRAM := func(name string) (*VM, []byte) {
		vm, err := h.Create(Spec{Name: name, Memory: 64, Kernel: kernel, SharedMemory: &on})
		if err != nil {
			t.Fatal(err)
		}
		f, _, err := vm.openRAM(vm.Spec(), false)
		if err != nil {
			t.Skipf("no shared RAM file here: %v", err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		copy(m[size-5:], "guest")
		vm.mu.Lock()
		vm.rt.PID = os.Getpid() // the process that maps it, as QEMU does
		vm.mu.Unlock()
		t.Cleanup(func() {
			vm.mu.Lock()
			vm.rt.PID = 0
			vm.mu.Unlock()
			unix.Munmap(m)
			vm.removeRAM()
		})
		return vm, m
	}
	vm, m := vmWithRAM("pop1")
	path := h.ramPath(vm.Spec())
	if allocated(path, size) {
		t.Fatal("a new RAM file is allocated already: the test shows nothing")
	}
	h.cfg.RAMPopulate = populateNever
	if n := vm.populateRAM(context.Background(), "test", false); n != 0 || allocated(path, size) {
		t.Fatalf("ram_populate never: populated %d bytes", n)
	}
	h.cfg.RAMPopulate = populateOnOperation
	if vm.populateAfterStart() {
		t.Fatal("ram_populate operation: a new QEMU's RAM file is populated")
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if n := vm.populateRAM(ended, "test", false); n != 0 {
		t.Fatalf("populated %d bytes after its context ended", n)
	}
	if n := vm.populateRAM(context.Background(), "test", false); n != size || !allocated(path, size) {
		t.Fatalf("populated %d of %d bytes; allocated: %v", n, size, allocated(path, size))
	}
	if string(m[size-5:]) != "guest" || m[0] != 0 {
		t.Fatalf("guest memory changed: %q", m[size-5:])
	}

	h.cfg.RAMPopulate = populateAtStart
	vm.sparseRAM = true // a template's
	if vm.populateAfterStart() {
		t.Fatal("a template's RAM file is populated")
	}
	vm2, _ := vmWithRAM("pop2")
	if !vm2.populateAfterStart() {
		t.Fatal("ram_populate start: a new QEMU's RAM file is not populated")
	}
	for deadline := time.Now().Add(30 * time.Second); !allocated(h.ramPath(vm2.Spec()), size); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("ram_populate start: the RAM file of a new QEMU is not populated")
		}
	}
}

// TestRAMPopulateConfig: populating at start is the default; another
// value than start, operation or never is refused.
func TestRAMPopulateConfig(t *testing.T) {
	c := Config{StateDir: t.TempDir()}
	if err := c.setDefaults(); err != nil || c.RAMPopulate != populateAtStart {
		t.Fatalf("default ram_populate %q (%v), want %q", c.RAMPopulate, err, populateAtStart)
	}
	for _, v := range []string{populateOnOperation, populateNever} {
		c := Config{StateDir: t.TempDir(), RAMPopulate: v}
		if err := c.setDefaults(); err != nil || c.RAMPopulate != v {
			t.Fatalf("ram_populate %q: %q, %v", v, c.RAMPopulate, err)
		}
	}
	c = Config{StateDir: t.TempDir(), RAMPopulate: "boot"}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "ram_populate") {
		t.Fatalf("ram_populate boot: %v, want an error naming ram_populate", err)
	}
}

// TestMapIntoProcessFillsItsPageTables: after populate, pages of a shared
// mapping of the file (QEMU's, here this process's) are not in its page
// tables until mapIntoProcess reads them through /proc/PID/mem: then
// every span it read is, no byte changed; a context that ended maps none.
func TestMapIntoProcessFillsItsPageTables(t *testing.T) {
	const size = 8 << 20
	f := sparseShmFile(t, size)
	if _, err := f.WriteAt([]byte("guest"), size-5); err != nil {
		t.Fatal(err)
	}
	if _, err := populateFile(context.Background(), f, size); err != nil {
		t.Skipf("populate: %v", err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	pagemap, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Skip(err)
	}
	defer pagemap.Close()
	present := func(off int) bool { // bit 63 of the page's pagemap entry
		var e [8]byte
		addr := uintptr(unsafe.Pointer(&m[0])) + uintptr(off)
		if _, err := pagemap.ReadAt(e[:], int64(addr/uintptr(os.Getpagesize()))*8); err != nil {
			t.Fatal(err)
		}
		return e[7]&0x80 != 0
	}
	count := func() (n int) {
		for off := 0; off < size; off += os.Getpagesize() {
			if present(off) {
				n++
			}
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("%d pages in the page tables before: the test shows nothing", n)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if err := mapIntoProcess(ended, os.Getpid(), f); err != nil || count() != 0 {
		t.Fatalf("a context that ended: %v, %d pages mapped", err, count())
	}
	if err := mapIntoProcess(context.Background(), os.Getpid(), f); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < size; off += faultAround {
		if !present(off) {
			t.Fatalf("the page at %d, read through /proc/self/mem, is not in the page tables", off)
		}
	}
	t.Logf("%d of %d pages mapped by %d reads", count(), size/os.Getpagesize(), size/faultAround)
	if string(m[size-5:]) != "guest" || m[0] != 0 {
		t.Fatalf("guest memory changed: %q", m[size-5:])
	}
}

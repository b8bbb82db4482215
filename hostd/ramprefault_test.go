package hostd

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestTouchMappingFaultsPagesIn: a process's shared mapping of a tmpfs
// file whose pages were never touched has them all in memory (allocated,
// mapped) after touchMapping, read through /proc/PID/mem, and the file
// counts as allocated (prefaultRAM then leaves it alone).
func TestTouchMappingFaultsPagesIn(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "symvirt-touch-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "ram")
	const size = 4 << 20
	f, err := os.Create(path)
	if err == nil {
		err = f.Truncate(size)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	resident := func() int {
		vec := make([]byte, size/os.Getpagesize())
		_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(size), uintptr(unsafe.Pointer(&vec[0])))
		if errno != 0 {
			t.Fatal(errno)
		}
		n := 0
		for _, v := range vec {
			n += int(v & 1)
		}
		return n
	}
	if n := resident(); n != 0 || allocated(path, size) {
		t.Fatalf("%d pages resident before (allocated: %v)", n, allocated(path, size))
	}
	pages, err := touchMapping(os.Getpid(), path)
	if err != nil || pages != size/os.Getpagesize() {
		t.Fatalf("touchMapping: %d pages, %v", pages, err)
	}
	if n := resident(); n != pages {
		t.Fatalf("%d of %d pages resident after", n, pages)
	}
	if !allocated(path, size) {
		t.Fatal("the file is not all allocated after touchMapping")
	}
	for _, b := range m[:16] {
		if b != 0 {
			t.Fatal("guest memory changed")
		}
	}
}

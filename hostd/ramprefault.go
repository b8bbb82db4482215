package hostd

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// prefaultRAM faults every page of guest RAM in for QEMU while the VM
// runs on, unfenced: a background snapshot's QEMU reads every page of
// guest RAM before its point (to write-protect it), and on a tmpfs each
// page the guest never touched is a fault that allocates and zeroes it.
// The first point of a 1 GiB VM under load spent 1.4–1.7 s there, with
// the VM already fenced (later points: 30 ms); with this, 40–100 ms.
// hostd reads the pages through /proc/PID/mem, which faults them in
// without QEMU's involvement (its main loop and the guest run on) and
// without writing guest memory; the snapshot would allocate the pages
// anyway. A file all allocated is left alone, and so is a hugetlbfs file
// (its pages are reserved at start). Best effort: a failure leaves the
// work to the snapshot.
func (vm *VM) prefaultRAM() {
	s := vm.Spec()
	pid := vm.pid()
	if !s.UsesSharedMemory() || s.HugePages || pid <= 0 {
		return
	}
	path := vm.h.ramPath(s)
	if allocated(path, int64(s.Memory)<<20) {
		return
	}
	start := timeNow()
	pages, err := touchMapping(pid, path)
	if err != nil {
		vm.log.Warn("guest RAM not mapped ahead of the snapshot point", "err", err)
		return
	}
	vm.log.Info("guest RAM mapped ahead of the snapshot point", "pages", pages, "took", timeNow().Sub(start))
}

// touchMapping faults every page of process pid's mappings of file path
// into its page tables: it reads them through /proc/PID/mem, a chunk at a
// time. It returns how many pages it read.
func touchMapping(pid int, path string) (int, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	buf := make([]byte, 1<<20)
	pages := 0
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		var lo, hi uint64
		if len(f) < 6 || f[5] != path {
			continue
		}
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil {
			return pages, fmt.Errorf("/proc/%d/maps: %q: %w", pid, f[0], err)
		}
		for a := lo; a < hi; a += uint64(len(buf)) {
			n, err := mem.ReadAt(buf[:min(uint64(len(buf)), hi-a)], int64(a))
			pages += n / os.Getpagesize()
			if err != nil {
				return pages, fmt.Errorf("read /proc/%d/mem at %#x: %w", pid, a, err)
			}
		}
	}
	if pages == 0 {
		return 0, errors.New("qemu maps no " + path)
	}
	return pages, nil
}

// allocated reports whether the file at path has all of its size bytes
// allocated (a guest that touched all its RAM, or an earlier snapshot).
func allocated(path string, size int64) bool {
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && st.Blocks*512 >= size
}

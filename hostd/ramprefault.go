package hostd

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// prefaultRAM maps every page of guest RAM into QEMU's page tables while
// the VM runs on, unfenced: a background snapshot's QEMU reads every page
// of guest RAM before its point (to write-protect it), and on a tmpfs
// each page not yet in its page tables is a fault, one that allocates and
// zeroes the page where the guest never touched it. The first point of a
// 1 GiB VM under load spent 1.4–1.7 s there, with the VM already fenced,
// where later points took 30 ms. hostd reads the pages through
// /proc/PID/mem, which faults them in for QEMU without QEMU's involvement
// (its main loop and the guest run on) and without writing guest memory;
// the snapshot would allocate the pages anyway. A hugetlbfs
// file is left alone (its pages are reserved at start). Best effort: a
// failure leaves the work to the snapshot.
func (vm *VM) prefaultRAM() {
	s := vm.Spec()
	pid := vm.pid()
	if !s.UsesSharedMemory() || s.HugePages || pid <= 0 {
		return
	}
	start := timeNow()
	pages, err := touchMapping(pid, vm.h.ramPath(s))
	if err != nil {
		vm.log.Warn("guest RAM not mapped ahead of the snapshot point", "err", err)
		return
	}
	vm.log.Info("guest RAM mapped ahead of the snapshot point", "pages", pages, "took", timeNow().Sub(start))
}

// touchMapping faults every page of process pid's mappings of file path
// into its page tables: it reads them through /proc/PID/mem, a chunk at a
// time, but not a mapping whose pages are all there already (its Rss in
// /proc/PID/smaps). It returns how many pages it read.
func touchMapping(pid int, path string) (int, error) {
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	buf := make([]byte, 1<<20)
	pages, found := 0, false
	for _, m := range mappingsOf(string(smaps), path) {
		found = true
		if m.rss >= m.hi-m.lo {
			continue
		}
		for a := m.lo; a < m.hi; a += uint64(len(buf)) {
			n, err := mem.ReadAt(buf[:min(uint64(len(buf)), m.hi-a)], int64(a))
			pages += n / os.Getpagesize()
			if err != nil {
				return pages, fmt.Errorf("read /proc/%d/mem at %#x: %w", pid, a, err)
			}
		}
	}
	if !found {
		return 0, errors.New("qemu maps no " + path)
	}
	return pages, nil
}

type mapping struct{ lo, hi, rss uint64 }

// mappingsOf lists the mappings of path in a /proc/PID/smaps, each with
// its resident size (bytes).
func mappingsOf(smaps, path string) []mapping {
	var ms []mapping
	var cur *mapping
	for _, line := range strings.Split(smaps, "\n") {
		f := strings.Fields(line)
		var lo, hi uint64
		switch {
		case len(f) >= 6 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			cur = nil
			if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err == nil && f[5] == path {
				ms = append(ms, mapping{lo: lo, hi: hi})
				cur = &ms[len(ms)-1]
			}
		case cur != nil && len(f) == 3 && f[0] == "Rss:":
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			cur.rss = kb << 10
		}
	}
	return ms
}

package hostd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// populateChunk is how much of the RAM file one madvise populates: small
// enough to stop soon when the operation that needs it ends, and to hold
// hostd's mmap lock (which the madvise takes) only briefly: at the lowest
// priority on a busy host a call may wait long for a CPU, and every mmap
// of hostd (its heap growing, a checkpoint's copy) waits behind it.
const populateChunk = 1 << 20

// When hostd populates a VM's RAM file on /dev/shm (Config.RAMPopulate).
const (
	// populateAtStart: beside every new QEMU of the VM, at the lowest
	// priority, so that no later operation finds holes.
	populateAtStart = "start"
	// populateOnOperation: only when an operation reads every page (a
	// migration at both ends, a live checkpoint's arm).
	populateOnOperation = "operation"
	// populateNever leaves every page to QEMU's own faults.
	populateNever = "never"
)

// populateRAM is how hostd faults a VM's shared RAM file on /dev/shm in:
// it allocates every page of it, from its end back, until ctx ends, and
// returns how many bytes it populated. QEMU reads every page of guest
// RAM in a migration (the source to send it, the destination to see
// whether a zero page needs clearing) and before a background snapshot's
// point (to write-protect it), and a tmpfs page that was never written is
// allocated and zeroed by that read, one fault a page (a shared mapping
// has no zero page). Populated, QEMU's faults on it map pages sixteen at
// a time. Measured here, 1 GiB of holes read through a mapping: 0.7–1.6 s;
// MADV_POPULATE_WRITE through hostd's own mapping 0.6–0.9 s, then read
// 0.06–0.07 s; the pages read through /proc/PID/mem into QEMU's own
// mapping 0.8–1.3 s (then 0.005 s), and that holds QEMU's mmap lock;
// fallocate 0.25–0.8 s, but it leaves the pages to be zeroed at QEMU's
// reads (0.5–1.2 s). It never writes guest memory (MADV_POPULATE_WRITE
// only faults pages in), so it is safe while QEMU writes the same file.
// A file all allocated is left alone, and so is a hugetlbfs file (its
// pages are reserved at start).
//
// intoQEMU also maps the pages into QEMU's page tables (mapIntoProcess),
// for a background snapshot, whose reads of every page come after the
// VM's network fence: 75–100 ms a GiB here, taken off that window.
//
// Best effort: a failure, logged, leaves the work to QEMU's faults. phase
// names the caller in the log.
func (vm *VM) populateRAM(ctx context.Context, phase string, intoQEMU bool) int64 {
	return vm.populateRAMBy(ctx, phase, intoQEMU, populateFile)
}

// populateRAMBy is populateRAM with populate doing the file's population.
func (vm *VM) populateRAMBy(ctx context.Context, phase string, intoQEMU bool, populate func(context.Context, *os.File, int64) (int64, error)) int64 {
	s := vm.Spec()
	if vm.h.cfg.RAMPopulate == populateNever || !s.UsesSharedMemory() || s.HugePages {
		return 0
	}
	f, err := vm.sharedRAM()
	if f == nil || err != nil {
		return 0
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	start := timeNow()
	var n int64
	if !allocated(f.Name(), st.Size()) {
		n, err = populate(ctx, f, st.Size())
	}
	if pid := vm.pid(); err == nil && intoQEMU && pid > 0 {
		err = mapIntoProcess(ctx, pid, f)
	}
	if err != nil {
		vm.log.Warn("guest RAM not populated", "for", phase, "err", err)
	}
	if n > 0 || intoQEMU {
		vm.logPhase(phase, timeNow().Sub(start))
		vm.log.Info("guest RAM populated", "for", phase, "bytes", n, "into_qemu", intoQEMU, "took", timeNow().Sub(start))
	}
	return n
}

// populateFile populates size bytes of f's shared mapping, a chunk at a
// time from the end.
func populateFile(ctx context.Context, f *os.File, size int64) (int64, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("map %s: %w", f.Name(), err)
	}
	defer unix.Munmap(mem)
	done := int64(0)
	for end := size; end > 0 && ctx.Err() == nil; end -= populateChunk {
		lo := max(0, end-populateChunk)
		if err := unix.Madvise(mem[lo:end], unix.MADV_POPULATE_WRITE); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return done, errors.New("kernel without MADV_POPULATE_WRITE (5.14)")
			}
			return done, fmt.Errorf("populate %s at %d: %w", f.Name(), lo, err)
		}
		done += end - lo
	}
	return done, nil
}

// faultAround is the span one read fault of a file mapping maps in (the
// kernel's fault_around_bytes, 64 KiB by default): mapIntoProcess reads one
// byte of each. A kernel that maps less leaves the rest to QEMU's faults.
const faultAround = 64 << 10

// mapIntoProcess maps the pages of file f, allocated already, into the
// page tables of process pid's shared mappings of it: it reads one byte
// of every faultAround bytes through /proc/PID/mem, and each read's fault
// maps the span around it. It holds none of QEMU's locks between reads,
// and writes nothing.
func mapIntoProcess(ctx context.Context, pid int, f *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	spans, err := fileMappings(pid, st.Dev, st.Ino)
	if err != nil {
		return err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return err
	}
	defer mem.Close()
	b := make([]byte, 1)
	for _, s := range spans {
		for a := s[0]; a < s[1] && ctx.Err() == nil; a += faultAround {
			if _, err := mem.ReadAt(b, int64(a)); err != nil {
				return fmt.Errorf("read /proc/%d/mem at %#x: %w", pid, a, err)
			}
		}
	}
	return nil
}

// fileMappings are the address ranges where process pid maps the file of
// device dev and inode ino.
func fileMappings(pid int, dev, ino uint64) ([][2]uint64, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	want := fmt.Sprintf("%02x:%02x %d", unix.Major(dev), unix.Minor(dev), ino)
	var spans [][2]uint64
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		var lo, hi uint64
		if len(f) < 5 || f[3]+" "+f[4] != want {
			continue
		}
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil {
			return nil, fmt.Errorf("/proc/%d/maps: %q: %w", pid, f[0], err)
		}
		spans = append(spans, [2]uint64{lo, hi})
	}
	if len(spans) == 0 {
		return nil, fmt.Errorf("process %d does not map inode %d", pid, ino)
	}
	return spans, nil
}

// populateRAMBeside runs populateRAM in the background until ctx ends,
// the returned function is called, or the VM's current QEMU exits;
// lowest runs it at the lowest priority, in a helper process
// (populatehelper.go; nothing waits for it). Its
// phase is bg_populate_ram_SIDE: beside an operation, not a part of it.
func (vm *VM) populateRAMBeside(ctx context.Context, side string, lowest bool) context.CancelFunc {
	pctx, cancel := context.WithCancel(ctx)
	exited := vm.exited()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-pctx.Done():
		}
	}()
	vm.h.populating.Add(1)
	populate := populateFile
	if lowest {
		populate = populateLowest
	}
	go func() {
		defer vm.h.populating.Add(-1)
		defer cancel()
		vm.populateRAMBy(pctx, "bg_populate_ram_"+side, false, populate)
	}()
	return cancel
}

// populateAfterStart populates the RAM file of a QEMU just started (or
// just migrated in), when the host populates at start; not a template's, whose holes its clones
// and the hosts it is published to would otherwise hold as zeros. It
// returns whether it started.
func (vm *VM) populateAfterStart() bool {
	if vm.h.cfg.RAMPopulate != populateAtStart || vm.sparseRAM {
		return false
	}
	vm.populateRAMBeside(context.Background(), "start", true)
	return true
}

// allocated reports whether the file at path has all of its size bytes
// allocated (a guest that touched all its RAM, or an earlier populate).
func allocated(path string, size int64) bool {
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && st.Blocks*512 >= size
}

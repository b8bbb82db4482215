package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MigrationThreadNames: QEMU names its threads when started with -name ...,debug-threads=on
// (args.go): a migration's sending thread is "live_migration" (7.2) or
// "mig/src/main" (9 and later), a TCG vCPU "CPU 0/TCG".
var MigrationThreadNames = []string{"live_migration", "mig/src/"}

// MigrationThreads are the thread IDs of QEMU pid's outgoing migration
// threads (none before a migrate command has started one).
func MigrationThreads(pid int) ([]int, error) {
	return ThreadsNamed(pid, MigrationThreadNames...)
}

// ThreadsNamed returns the IDs of pid's threads whose name starts with one
// of prefixes.
func ThreadsNamed(pid int, prefixes ...string) ([]int, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("threads of qemu %d: %w", pid, err)
	}
	var out []int
	for _, e := range ents {
		comm, err := os.ReadFile(filepath.Join(dir, e.Name(), "comm"))
		if err != nil {
			continue // the thread ended
		}
		name := strings.TrimSpace(string(comm))
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				if tid, err := strconv.Atoi(e.Name()); err == nil {
					out = append(out, tid)
				}
				break
			}
		}
	}
	return out, nil
}

// SetThreadIdle runs thread tid under SCHED_IDLE (idle) or back under
// SCHED_NORMAL: an idle thread gets a core only when nothing else on it
// wants one, so a bulk copy beside a guest's vCPU takes what the vCPU
// leaves instead of half of it.
func SetThreadIdle(tid int, idle bool) error {
	policy := unix.SCHED_NORMAL
	if idle {
		policy = unix.SCHED_IDLE
	}
	var param struct{ priority int32 } // sched_param: 0 for both policies
	_, _, e := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(policy), uintptr(unsafe.Pointer(&param)))
	if e != 0 {
		return fmt.Errorf("sched_setscheduler thread %d policy %d: %w", tid, policy, e)
	}
	return nil
}

// ThreadIdle tells whether thread tid runs under SCHED_IDLE.
func ThreadIdle(tid int) (bool, error) {
	p, _, e := unix.Syscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
	if e != 0 {
		return false, fmt.Errorf("sched_getscheduler thread %d: %w", tid, e)
	}
	return int(p) == unix.SCHED_IDLE, nil
}

// Threads are the thread IDs of QEMU pid: its main loop (device I/O, an
// incoming migration's loading), its vCPUs ("CPU n/TCG") and the rest.
func Threads(pid int) ([]int, error) {
	return ThreadsNamed(pid, "")
}

// Boost renices every thread of QEMU process pid to nice and returns the
// function that ends the boost (once): each thread gets its nice value
// back, and threads born during the boost (which inherit it) get the
// main thread's.
func Boost(pid, nice int) (unboost func()) {
	old := map[int]int{}
	tids, _ := Threads(pid)
	for _, tid := range tids {
		if n, err := ThreadNice(tid); err == nil {
			old[tid] = n
			SetThreadNice(tid, nice)
		}
	}
	return sync.OnceFunc(func() {
		tids, _ := Threads(pid) // none once QEMU is gone
		for _, tid := range tids {
			n, ok := old[tid]
			if !ok {
				n = old[pid]
			}
			SetThreadNice(tid, n)
		}
	})
}

// SetThreadNice sets thread tid's nice value (-20..19; below 0 needs
// CAP_SYS_NICE): setpriority(2) on a thread ID changes that thread alone.
func SetThreadNice(tid, nice int) error {
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
		return fmt.Errorf("setpriority thread %d nice %d: %w", tid, nice, err)
	}
	return nil
}

// ThreadNice is thread tid's nice value.
func ThreadNice(tid int) (int, error) {
	// The raw syscall returns 20-nice, so that no valid result is negative.
	p, _, e := unix.Syscall(unix.SYS_GETPRIORITY, uintptr(unix.PRIO_PROCESS), uintptr(tid), 0)
	if e != 0 {
		return 0, fmt.Errorf("getpriority thread %d: %w", tid, e)
	}
	return 20 - int(p), nil
}

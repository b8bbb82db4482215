package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// VCPUThreadPrefix starts the name of every vCPU thread of a QEMU started
// with debug-threads=on ("CPU 0/TCG", "CPU 1/KVM").
const VCPUThreadPrefix = "CPU "

// SchedStat is what threads had of the CPUs: time on one and time ready
// to run but waiting for one (the kernel's schedstat).
type SchedStat struct {
	Run, Wait time.Duration
}

// Sub is s less an earlier o.
func (s SchedStat) Sub(o SchedStat) SchedStat {
	return SchedStat{Run: s.Run - o.Run, Wait: s.Wait - o.Wait}
}

// ThreadsSchedStat sums the schedstat of pid's threads whose name starts
// with one of prefixes (a thread gone since is not counted).
func ThreadsSchedStat(pid int, prefixes ...string) (SchedStat, error) {
	tids, err := ThreadsNamed(pid, prefixes...)
	if err != nil {
		return SchedStat{}, err
	}
	var sum SchedStat
	for _, tid := range tids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(tid), "schedstat"))
		if err != nil {
			continue
		}
		var run, wait int64
		if _, err := fmt.Sscan(string(b), &run, &wait); err != nil {
			return SchedStat{}, fmt.Errorf("schedstat of thread %d: %q: %w", tid, b, err)
		}
		sum.Run += time.Duration(run)
		sum.Wait += time.Duration(wait)
	}
	return sum, nil
}

package qemu

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// schedResetOnFork makes the threads a real-time thread starts normal
// ones (sched(7)): only the threads set here are ever put back.
const schedResetOnFork = 0x40000000

// SetThreadRealtime runs thread tid under SCHED_RR at priority prio
// (1..99), or, prio 0, back under SCHED_NORMAL (its nice value kept).
func SetThreadRealtime(tid, prio int) error {
	policy := unix.SCHED_RR | schedResetOnFork
	if prio == 0 {
		policy = unix.SCHED_NORMAL
	}
	param := struct{ priority int32 }{int32(prio)}
	_, _, e := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(policy), uintptr(unsafe.Pointer(&param)))
	if e != 0 {
		return fmt.Errorf("sched_setscheduler thread %d policy %d priority %d: %w", tid, policy, prio, e)
	}
	return nil
}

// Realtime runs every thread of QEMU process pid under SCHED_RR at prio
// and returns the function that puts them back under SCHED_NORMAL (call
// it once; threads gone by then are skipped). The first error is
// returned with the threads it did change.
func Realtime(pid, prio int) (normal func(), err error) {
	tids, err := Threads(pid)
	var done []int
	for _, tid := range tids {
		if e := SetThreadRealtime(tid, prio); e != nil {
			err = e
			break
		}
		done = append(done, tid)
	}
	return func() {
		for _, tid := range done {
			SetThreadRealtime(tid, 0) // gone already: nothing to restore
		}
	}, err
}

// ResetScheduling puts every thread of process pid back as QEMU started
// it: SCHED_NORMAL, nice 0. A hostd that died during a boost, a point's
// real time or a migration's idle thread left them so; the one that adopts the VM
// resets them. It returns the first error.
func ResetScheduling(pid int) error {
	tids, err := Threads(pid)
	for _, tid := range tids {
		e := SetThreadRealtime(tid, 0)
		if e == nil {
			e = SetThreadNice(tid, 0)
		}
		if err == nil {
			err = e
		}
	}
	return err
}

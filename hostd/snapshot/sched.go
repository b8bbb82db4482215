package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/qemu"
)

const (
	// streamNice is a stream thread's nice value outside a boost: on a
	// host short of cores a guest waiting for a CPU is as stalled as a
	// paused one, and a vCPU blocked on a write fault is not runnable,
	// which leaves the stream a core to serve it.
	streamNice = 19
	// snapshotNice is a VM's QEMU threads' around its snapshot point.
	snapshotNice = -10
	// catchUp is how long a VM keeps its boost after a background point,
	// and the machine's snapshot lock with it: right after the point each
	// first write of the guest to a page waits for the stream's thread.
	// Four VMs on two cores paused 16-24 ms at the cut with it, 77-125 ms
	// without (the price: the network fence held 50 ms longer per VM).
	catchUp = 50 * time.Millisecond
	// lockPath serializes snapshot points across a machine's hostds.
	lockPath = "/run/symvirt-snapshot.lock"
)

// BackgroundStreamNice is a background snapshot's stream thread's nice
// value once its boost ends. It is not streamNice: that thread also
// serves every write fault on guest RAM, the main loop's too (the
// network's receive path, QMP), so at nice 19 under CPU load a VM stopped
// answering its network for 100-400 ms at a time while its stream ran
// (hostd's network gap benchmark; the stream of 1 GiB took 12 s, 3-4 s at 0).
var BackgroundStreamNice = 0

// serializePoints takes the machine's snapshot lock: a point is a burst of
// CPU (device state, write-protecting all RAM) during which its VM stands
// still, and several at once stretch every one of them.
func serializePoints(ctx context.Context, log *slog.Logger) (unlock func(), err error) {
	unlock, err = lockMachine(ctx, lockPath)
	if err != nil && ctx.Err() == nil {
		// An optimization, not a condition: go on unserialized.
		log.Warn("snapshot points not serialized on this machine", "err", err)
		return func() {}, nil
	}
	return unlock, err
}

// lockMachine takes an exclusive flock on path, polling so that ctx can
// end the wait.
func lockMachine(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// boost renices every thread of QEMU process pid to nice and returns the
// function that ends the boost (once): each thread gets its nice value
// back, threads born during the boost (which inherit it) get the main
// thread's, and the background-snapshot thread (named by -name
// debug-threads=on, born at the point) gets BackgroundStreamNice.
func boost(pid, nice int) (unboost func()) {
	if pid <= 0 {
		return func() {}
	}
	end := qemu.Boost(pid, nice)
	return sync.OnceFunc(func() {
		end()
		renice(pid, BackgroundStreamNice, "bg_snapshot")
	})
}

// PointRealtime runs a VM's QEMU threads under SCHED_RR from the start of
// a precopy's point until it is behind (hostd's live_point_realtime): a
// nice value does not keep the vCPU off the run queue where other VMs'
// threads want the same cores, and a vCPU that waits for a core is paused
// as much as a stopped one. But a busy thread in real time holds a core
// for the whole window, and where the VM's busy threads are as many as
// the cores, hostd, which takes the point, waits out pointRealtimeMax.
// Not for a background snapshot's point: its stream thread, born at the
// point, serves the guest's write faults, and a thread born of a
// real-time one starts normal.
var PointRealtime = false

// realtime runs process pid's threads under SCHED_RR when PointRealtime
// and returns the function that puts them back (once). An error (no
// CAP_SYS_NICE, a real-time budget of 0) is logged and leaves the threads
// it could not change as they were.
func realtime(pid int, log *slog.Logger) (normal func()) {
	if !PointRealtime || pid <= 0 {
		return func() {}
	}
	normal, err := qemu.Realtime(pid, pointRealtimePriority)
	if err != nil {
		log.Warn("snapshot point not run in real time", "err", err)
	}
	once := sync.OnceFunc(normal)
	t := time.AfterFunc(pointRealtimeMax, once)
	return func() { t.Stop(); once() }
}

// pointRealtimeMax bounds a point's real time: a guest that keeps
// dirtying memory keeps its released copy from switching over, and must
// not keep a core from the host's other threads meanwhile.
var pointRealtimeMax = 100 * time.Millisecond

// pointRealtimePriority is the lowest real-time priority: above every
// normal thread, below anything the host itself runs in real time.
const pointRealtimePriority = 1

// vcpuSched is what process pid's vCPU threads have had of the CPUs so
// far (zero if unknown).
func vcpuSched(pid int) qemu.SchedStat {
	st, _ := qemu.ThreadsSchedStat(pid, qemu.VCPUThreadPrefix)
	return st
}

// renice sets the nice value of process pid's threads whose names start
// with one of names.
func renice(pid, nice int, names ...string) {
	tids, _ := qemu.ThreadsNamed(pid, names...) // none once QEMU is gone
	for _, tid := range tids {
		qemu.SetThreadNice(tid, nice)
	}
}

// atLowestPriority runs fn on a thread of the lowest priority: syncing
// (the kernel writes the pages back on the caller's time) and hashing a
// stream take tens of milliseconds of CPU per 256 MiB, which the vCPUs and
// the other VMs' streams (serving their guests' write faults) need more.
func atLowestPriority(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		// The thread dies with this goroutine (locked, never unlocked).
		runtime.LockOSThread()
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), streamNice)
		ch <- fn()
	}()
	return <-ch
}

// cleanup runs an undoing QMP command with a context of its own: it must
// not depend on the request that failed, nor wait on a QEMU for ever.
func cleanup(fn func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fn(ctx)
}

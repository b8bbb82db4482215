package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// streamNice is a stream thread's nice value outside the point's boost.
// On a host short of cores the streams compete with the vCPUs they
// protect, and a guest waiting for a CPU is as stalled as a paused one, so
// the stream yields to everything; a vCPU blocked on a write fault is not
// runnable, which leaves the stream a core to serve it.
const streamNice = 19

// snapshotNice is the nice value of a VM's QEMU threads, its stream's
// included, from a background snapshot's migrate to catchUp after its
// point, and during a precopy's final stop.
const snapshotNice = -10

// catchUp is how long a VM keeps its boost after its background snapshot
// point, and the machine's snapshot lock with it. Right after the point
// the guest writes to pages it had not yet written, and each first write
// waits for the stream's thread to save that page: boosted, and with no
// other VM taking its point meanwhile, the thread serves them at once.
// Measured with four VMs on two cores: the guests' pause at the cut 16-24
// ms with this (six runs), 77-125 ms with the stream at nice 19 from the
// point on and the next VM's point right after; the price is the network
// fence, held 50 ms longer per VM.
const catchUp = 50 * time.Millisecond

// lockPath serializes snapshot points across the hostds of a machine.
const lockPath = "/run/symvirt-snapshot.lock"

// serializePoints takes the machine's snapshot lock: one point at a time,
// each with its catch-up. A point is a burst of CPU (device state,
// write-protecting all RAM) during which its VM stands still, and right
// after it the guest's first writes fault into the stream's thread;
// several at once stretch every one of them.
func serializePoints(ctx context.Context, log *slog.Logger) (unlock func(), err error) {
	unlock, err = lockMachine(ctx, lockPath)
	switch {
	case ctx.Err() != nil:
		if err == nil {
			unlock()
		}
		return nil, ctx.Err()
	case err != nil:
		// An optimization, not a condition: go on unserialized.
		log.Warn("snapshot points not serialized on this machine", "err", err)
		return func() {}, nil
	}
	return unlock, nil
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
// back, the background-snapshot thread (named by -name debug-threads=on)
// gets streamNice, and threads born during the boost (which inherit it)
// get the main thread's.
func boost(pid, nice int) (unboost func()) {
	if pid <= 0 {
		return func() {}
	}
	old := map[int]int{}
	for _, tid := range threads(pid) {
		// The raw getpriority(2) is 20-nice.
		if p, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil {
			old[tid] = 20 - p
			unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
		}
	}
	return sync.OnceFunc(func() {
		for _, tid := range threads(pid) {
			n, ok := old[tid]
			switch {
			case ok:
			case threadName(pid, tid) == "bg_snapshot":
				n = streamNice
			default:
				n = old[pid]
			}
			unix.Setpriority(unix.PRIO_PROCESS, tid, n)
		}
	})
}

// renice sets the nice value of process pid's threads called name.
func renice(pid int, name string, nice int) {
	for _, tid := range threads(pid) {
		if threadName(pid, tid) == name {
			unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
		}
	}
}

// threads lists the threads of process pid (none once it is gone).
func threads(pid int) []int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var tids []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids
}

func threadName(pid, tid int) string {
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", pid, tid))
	return strings.TrimSpace(string(comm))
}

// cleanup runs an undoing QMP command with a context of its own: it must
// not depend on the request that failed, nor wait on a QEMU for ever.
func cleanup(fn func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fn(ctx)
}

package hostd

import (
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/manifest"
)

// writebackEvery is how often a live checkpoint's state file is pushed
// to disk while its stream writes it.
const writebackEvery = 50 * time.Millisecond

// paceWriteback writes the state file of the live checkpoint armed in
// dir back to disk while its stream writes it, from the arm to the
// stream's end. Left to the stream's final sync, a GiB of dirty pages is
// written in one go, and every fsync on the filesystem meanwhile waits
// for it (an ext4 journal commit waits for the file's data): the point
// step's and the resume step's persisting, the coordinator's journal,
// all on the way from a job's last snapshot point to the lifting of its
// network fences (measured: 100-140 ms of it with QEMU 10's precopy, a
// small file's fsync 370 ms during a 1 GiB file's). The writes are only
// started here (SYNC_FILE_RANGE_WRITE), from a thread of the lowest
// priority; the stream's sync still makes the file durable.
func (vm *VM) paceWriteback(dir string) {
	if oldFenceLift {
		return
	}
	go func() {
		runtime.LockOSThread() // the thread dies with the goroutine
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		path := filepath.Join(dir, manifest.StateName)
		t := time.NewTicker(writebackEvery)
		defer t.Stop()
		var f *os.File
		seen := timeNow()
		for range t.C {
			if f == nil {
				f, _ = os.Open(path)
			}
			if f != nil {
				unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			}
			on, over := vm.streaming(dir)
			if on {
				seen = timeNow()
			}
			// Between the arm's hand-over and the point the save is in
			// neither place: only a while without either is the end.
			if over || timeNow().Sub(seen) > 10*time.Second {
				break
			}
		}
		if f != nil {
			f.Close()
		}
	}()
}

// streaming reports whether a live checkpoint into dir is armed or its
// stream runs (on), or its stream is over.
func (vm *VM) streaming(dir string) (on, over bool) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.armed != nil && vm.armed.Dir() == dir {
		return true, false
	}
	if ls := vm.live; ls != nil && ls.dir == dir {
		select {
		case <-ls.done:
			return false, true
		default:
			return true, false
		}
	}
	return false, false
}

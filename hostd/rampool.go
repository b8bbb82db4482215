package hostd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/hostd/spec"
	"golang.org/x/sys/unix"
)

// ramPoolDefault is how much guest RAM the pool keeps unless the config's
// ram_pool says otherwise; ramPoolTTL how long it keeps a file nobody
// takes.
const (
	ramPoolDefault = 4 << 30
	ramPoolTTL     = 10 * time.Minute
)

// ramPoolRefillDelay is how long after the last VM that arrived (a file
// asked of the pool) the pool waits before it makes a file for its
// reserve: that VM boots, migrates in or is restored now, and the file's
// zeroing would take CPU and memory bandwidth from it.
var ramPoolRefillDelay = 5 * time.Second

// ramPool keeps the shared RAM files of VMs that left this host (migrated
// away, stopped, deleted), every page allocated and zeroed, for the next
// VM that arrives by migration, boots or is restored here. A tmpfs page
// is allocated and zeroed by the first read of it through a shared
// mapping, and one stream's incoming migration reads every page (QEMU
// checks each zero page it gets against the page it has): a file from
// the pool spares the destination that, one fault a page. A file is
// handed out only once no other process has it open and hostd has
// written zeros over every page of it: another guest's memory never
// reaches a new one. At most max bytes, each file for ramPoolTTL; all of
// it freed before a new RAM file would not fit, and when hostd stops (a
// file left by one that crashed is removed at start, its zeroing
// unknown).
//
// With a reserve, the pool also makes files of its own, from hostd's
// start and after each VM that arrives, until it holds that much: the
// first VM to arrive on an idle host finds one too. The reserve's files
// outlive ramPoolTTL, and none is made that would leave /dev/shm less
// free room than its own size.
type ramPool struct {
	log     *slog.Logger
	dir     string // hostd's RAM directory on /dev/shm
	max     int64
	reserve int64

	mu    sync.Mutex
	ready []*pooledRAM
	// zeroing are the files being cleared, and their bytes.
	zeroing      int64
	zeroingFiles map[string]qemu.RAMFile
	seq          int
	closed       bool
	taken        int64
	lastTake     time.Time
	refill       *time.Timer // a refill waiting for ramPoolRefillDelay
}

// pooledRAM is a zeroed file in the pool.
type pooledRAM struct {
	id    qemu.RAMFile
	size  int64
	timer *time.Timer
}

// newRAMPool is the host's pool (nil when max is 0), after removing what
// an earlier hostd left in dir; it starts filling its reserve.
func newRAMPool(log *slog.Logger, dir string, max, reserve int64) *ramPool {
	if removed, err := qemu.RemovePooled(dir); len(removed) > 0 || err != nil {
		log.Info("pooled guest RAM files of an earlier hostd removed", "removed", removed, "err", err)
	}
	if max <= 0 {
		return nil
	}
	p := &ramPool{log: log, dir: dir, max: max, reserve: min(reserve, max), zeroingFiles: map[string]qemu.RAMFile{}}
	p.mu.Lock()
	p.refillLocked()
	p.mu.Unlock()
	return p
}

// refillLaterLocked refills the reserve once ramPoolRefillDelay has
// passed since the last VM arrived.
func (p *ramPool) refillLaterLocked() {
	if p.reserve == 0 || p.refill != nil {
		return
	}
	p.refill = time.AfterFunc(ramPoolRefillDelay-timeNow().Sub(p.lastTake), func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.refill = nil
		if timeNow().Sub(p.lastTake) < ramPoolRefillDelay {
			p.refillLaterLocked() // another hand-out since
			return
		}
		p.refillLocked()
	})
}

// refillLocked makes a new file for what the pool lacks of its reserve,
// zeroed (every page allocated) in the background, if its tmpfs has twice
// that room free.
func (p *ramPool) refillLocked() {
	need := p.reserve - p.readyBytes() - p.zeroing
	if p.closed || need <= 0 || qemu.FreeBytes(p.dir) < 2*need {
		return
	}
	p.seq++
	id, err := qemu.CreatePooled(p.dir, fmt.Sprintf("%s%d", qemu.PoolPrefix, p.seq))
	if err != nil {
		p.log.Warn("guest RAM pool reserve not refilled", "err", err)
		return
	}
	p.zeroing += need
	p.zeroingFiles[id.Path] = id
	go p.zero(id, need)
}

// put takes the RAM file id (no QEMU runs on it) into the pool and zeroes
// it in the background; false when the pool does not want it (the
// caller removes it).
func (p *ramPool) put(id qemu.RAMFile) bool {
	if p == nil || filepath.Dir(id.Path) != p.dir {
		return false // none, or a hugetlbfs file
	}
	var st unix.Stat_t
	if unix.Lstat(id.Path, &st) != nil || st.Size <= 0 || st.Size > p.max {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.seq++
	moved, err := id.Rename(fmt.Sprintf("%s%d", qemu.PoolPrefix, p.seq))
	if err != nil {
		p.log.Warn("guest RAM file not pooled", "file", id.Path, "err", err)
		return false
	}
	p.zeroing += st.Size
	p.zeroingFiles[moved.Path] = moved
	go p.zero(moved, st.Size)
	return true
}

// zero clears the pooled file id and makes it ready, or removes it if
// another process has it open. The check runs at hostd's priority (a
// few thousand small calls), the clearing at the lowest.
func (p *ramPool) zero(id qemu.RAMFile, size int64) {
	start := timeNow()
	err := errIfOpened(id)
	if err == nil {
		err = runLowest(func() error { return clearRAMFile(id, size) })
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.zeroing -= size
	delete(p.zeroingFiles, id.Path)
	if err != nil || p.closed {
		if err != nil && !p.closed {
			p.log.Warn("pooled guest RAM file removed", "file", id.Path, "err", err)
		}
		id.Remove()
		return
	}
	e := &pooledRAM{id: id, size: size}
	e.timer = time.AfterFunc(ramPoolTTL, func() { p.expire(e) })
	p.ready = append(p.ready, e)
	for p.readyBytes() > p.max {
		p.dropLocked(p.ready[0])
	}
	took := timeNow().Sub(start)
	p.log.Debug("phase", "phase", "bg_ram_pool_zero", "took", took)
	p.log.Info("guest RAM file zeroed for the pool", "file", id.Path, "bytes", size, "took", took)
}

// errIfOpened refuses a file another process has open: its pages would
// go on changing, and a new guest's would be that process's to read.
func errIfOpened(id qemu.RAMFile) error {
	if pid := id.OpenedByAny(); pid != 0 {
		return fmt.Errorf("process %d has it open", pid)
	}
	return nil
}

// runLowest runs do on a thread of its own at the lowest priority.
func runLowest(do func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread ends with the goroutine
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		done <- do()
	}()
	return <-done
}

// clearRAMFile writes zeros over all of the file id, every page allocated
// (a hole too): write calls of a MiB, never a mapping. A fault-in through
// hostd's own mapping at the lowest priority would hold hostd's mmap lock
// while it waits for a CPU, and every mmap of hostd (its heap growing, a
// checkpoint's copy) would wait behind it. A shorter file (a new one) is
// sized first: a tmpfs with huge=within_size gives 2 MiB pages only
// below the file's end.
func clearRAMFile(id qemu.RAMFile, size int64) error {
	f, err := os.OpenFile(id.Path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if d := id.Replaced(); d != "" {
		return fmt.Errorf("%s", d)
	}
	if st, err := f.Stat(); err != nil || st.Size() < size {
		if err := errors.Join(err, f.Truncate(size)); err != nil {
			return fmt.Errorf("size: %w", err)
		}
	}
	zero := make([]byte, clearChunk)
	for off := int64(0); off < size; off += clearChunk {
		if _, err := f.WriteAt(zero[:min(clearChunk, size-off)], off); err != nil {
			return fmt.Errorf("clear: %w", err)
		}
	}
	return nil
}

// clearChunk is how much clearRAMFile writes a call.
const clearChunk = 1 << 20

// Take hands out the ready file closest above size (the smallest that
// fits, its tail freed), renamed to path in dir: the pool's directory
// (a path elsewhere, on the hugetlbfs, gets none).
func (p *ramPool) Take(dir *os.File, path string, size int64) (*os.File, *qemu.RAMFile, bool) {
	if p == nil || filepath.Dir(path) != p.dir {
		return nil, nil, false
	}
	p.mu.Lock()
	var best *pooledRAM
	for _, e := range p.ready {
		if e.size >= size && (best == nil || e.size < best.size) {
			best = e
		}
	}
	// A VM arrives, whether or not it gets a file: the reserve is refilled
	// after its start (one freed by Reclaim too).
	p.lastTake = timeNow()
	p.refillLaterLocked()
	if best == nil {
		p.mu.Unlock()
		return nil, nil, false
	}
	p.unlistLocked(best)
	p.mu.Unlock()
	f, id, err := qemu.TakeAt(dir, best.id, path, size)
	if err != nil {
		p.log.Warn("pooled guest RAM file not taken", "file", best.id.Path, "for", path, "err", err)
		best.id.Remove()
		return nil, nil, false
	}
	p.mu.Lock()
	p.taken++
	p.mu.Unlock()
	p.log.Info("guest RAM file from the pool", "file", path, "bytes", size)
	return f, id, true
}

// Reclaim frees every ready file now (their pages are freed by the
// unlink: no descriptor is open on them).
func (p *ramPool) Reclaim() {
	if p == nil {
		return
	}
	p.mu.Lock()
	ready := slices.Clone(p.ready)
	for _, e := range ready {
		p.unlistLocked(e)
	}
	p.mu.Unlock()
	for _, e := range ready {
		if d := e.id.Replaced(); d == "" {
			unix.Unlink(e.id.Path)
		}
	}
}

// close frees the pool, the files still being cleared too (their
// clearing ends on a removed file).
func (p *ramPool) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.closed = true
	if p.refill != nil {
		p.refill.Stop()
	}
	for _, id := range p.zeroingFiles {
		id.Remove()
	}
	p.mu.Unlock()
	p.Reclaim()
}

// expire drops e, unless the pool would then hold less than its reserve.
func (p *ramPool) expire(e *pooledRAM) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !slices.Contains(p.ready, e):
	case p.readyBytes()+p.zeroing-e.size < p.reserve:
		e.timer.Reset(ramPoolTTL)
	default:
		p.dropLocked(e)
	}
}

// dropLocked removes a ready file; its pages are freed in the background.
func (p *ramPool) dropLocked(e *pooledRAM) {
	p.unlistLocked(e)
	e.id.Remove()
}

func (p *ramPool) unlistLocked(e *pooledRAM) {
	e.timer.Stop()
	p.ready = slices.DeleteFunc(p.ready, func(x *pooledRAM) bool { return x == e })
}

func (p *ramPool) readyBytes() (n int64) {
	for _, e := range p.ready {
		n += e.size
	}
	return n
}

// bytes is what the pool holds (ready or being zeroed): room on
// /dev/shm that a new VM's RAM file can have.
func (p *ramPool) bytes() int64 {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.readyBytes() + p.zeroing
}

// busy reports whether a file is being cleared, or the reserve waits to
// be refilled.
func (p *ramPool) busy() bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.zeroing > 0 || p.refill != nil
}

// takenCount is how many files the pool handed out.
func (p *ramPool) takenCount() int64 {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.taken
}

// parseRAMPool is the config's ram_pool and ram_pool_reserve in bytes:
// "" the default (4 GiB; no reserve), "0" or "off" none, else a size as in
// a spec ("4G", "512M"); the reserve is at most the pool.
func parseRAMPool(pool, reserve string) (max, res int64, err error) {
	if max, err = poolSize("ram_pool", pool, ramPoolDefault); err != nil {
		return 0, 0, err
	}
	if res, err = poolSize("ram_pool_reserve", reserve, 0); err != nil {
		return 0, 0, err
	}
	if res > max {
		return 0, 0, fmt.Errorf("config: ram_pool_reserve %q is more than ram_pool (%d MiB): the pool holds its reserve", reserve, max>>20)
	}
	return max, res, nil
}

func poolSize(field, v string, def int64) (int64, error) {
	switch v {
	case "":
		return def, nil
	case "0", "off":
		return 0, nil
	}
	s, err := spec.ParseSize(v)
	if err != nil {
		return 0, fmt.Errorf("config: %s %q: %w", field, v, err)
	}
	return int64(s) << 20, nil
}

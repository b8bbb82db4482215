package hostd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/qmp"
)

// A live checkpoint copies a running VM one of two ways (Config.LiveMode):
//
// precopy (startPrecopy; the default under KVM): QEMU copies the VM's
// memory while it runs, as a migration does, then stops it for the last
// pages and the devices' state, the snapshot point, and hostd runs it
// again. The pause does not grow with memory (3-10 ms here at 256 MiB to
// 2 GiB): it holds what the guest dirtied during the last pass, with no
// write-protection and no write ever waiting for the stream. Its price is
// time: the point comes at the end of the copy, and a job's network fence
// lasts from a VM's point to the job's last.
//
// snapshot (startBackground; the default under TCG): QEMU's
// background-snapshot saves the devices, write-protects all guest RAM
// through userfaultfd and runs the VM again, while its memory, as it was
// at that instant, streams on. QEMU 7.2 write-protects inside the pause
// (16-45 ms for 2 GiB in /dev/shm here), and after it every first write
// of the guest to a page waits until QEMU's migration thread has saved
// that page (it serves such faults between the pages it writes, so
// anything that slows its writes stretches the guest's stalls). A VM
// stopped for its cut (a job's VM with disks, copied at the cut) always
// takes this way: it is stopped anyway, and QEMU runs it at its point.
//
// Why not precopy under TCG: QEMU 7.2's TCG dirty tracking lets guest
// writes escape a precopy. TestBenchPrecopyImage compares each image with
// the guest's RAM at its point (read from /dev/shm while QEMU holds the VM
// stopped): with a guest rewriting 16 MiB, 2 of 20 images differed in
// 19-20 pages, and a job restored from such a checkpoint hung. Under KVM
// the dirty log is the kernel's, as in every live migration.
//
// A background snapshot writes straight into the checkpoint file (no pipe
// through hostd, no rate limit, which would park faults for up to a
// rate-limit window), and hostd checksums the file afterwards. QEMU 7.2
// must never meet a write error in one: it fails the migration without
// lifting the write protection, and the guest's vCPUs hang on their next
// write fault for good (checked here: a full tmpfs froze the guest). So the
// file's room is reserved up front (fallocate, before the cut), for either
// way: a disk that is or becomes full fails the checkpoint before the VM is
// touched.

// ErrLiveUnsupported: this QEMU or kernel cannot take a background
// snapshot (needed for a VM stopped for its cut); the caller falls back to
// stop-and-save and says why.
var ErrLiveUnsupported = errors.New("live checkpoint unsupported")

const liveFD = "symvirt-live"

// livePipeFD is the write end of the pipe a running VM's copy goes through.
const livePipeFD = "symvirt-live-pipe"

// liveArm is a live checkpoint made ready while the VM runs: QEMU's
// MIGRATION events on, the state file open with its room reserved and
// handed to QEMU (which a background snapshot writes into).
type liveArm struct {
	dir  string
	f    *os.File
	used bool
}

// armLive prepares a live checkpoint into dir, which must exist and be
// empty.
func (vm *VM) armLive(ctx context.Context, mon *qmp.Client, dir string, bandwidth int64) (*liveArm, error) {
	// MIGRATION events: a running VM's copy ends with the VM stopped, and
	// the sooner hostd hears of it the sooner the VM runs again.
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		return nil, fmt.Errorf("vm %q: arm live checkpoint: %w", vm.name, err)
	}
	a := &liveArm{dir: dir}
	var err error
	a.f, err = os.OpenFile(filepath.Join(dir, stateName), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err == nil {
		err = reserve(a.f, streamBound(vm.Spec().Memory))
		if errors.Is(err, unix.EOPNOTSUPP) {
			a.disarm(mon)
			return nil, fmt.Errorf("vm %q: %w: cannot reserve room for the stream in %s (no fallocate there)", vm.name, ErrLiveUnsupported, dir)
		}
	}
	if err == nil {
		err = mon.GetFD(ctx, liveFD, a.f)
	}
	if err == nil {
		// A cap on the stream would make page faults wait out QEMU's rate
		// limiting windows: the guest would stall. The operator may still
		// trade that for disk bandwidth.
		if bandwidth <= 0 {
			bandwidth = 64 << 30
		}
		err = mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": bandwidth})
	}
	if err != nil {
		a.disarm(mon)
		return nil, fmt.Errorf("vm %q: arm live checkpoint: %w", vm.name, err)
	}
	return a, nil
}

// disarm undoes an arm that was not used (or whose snapshot ended).
func (a *liveArm) disarm(mon *qmp.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if a.f != nil && !a.used {
		a.f.Close()
		os.RemoveAll(a.dir) // made for this arm
		mon.CloseFD(ctx, liveFD)
	}
	mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": false})
}

// liveSave is a live checkpoint past its snapshot point whose stream may
// still be being written (a background snapshot's) or checksummed.
type liveSave struct {
	dir  string
	done chan struct{}
	m    Manifest
	err  error
	// downtime is QEMU's own figure for the snapshot point's pause.
	downtime time.Duration
	// pause is how long the vCPUs stood still for the snapshot point, from
	// QEMU's STOP and RESUME events (host clock); 0 if the VM was
	// already stopped.
	pause time.Duration
	// at is when the vCPUs ran again after the snapshot point (RESUME).
	at time.Time
	// reattach is set once a hot-plug waits for the stream's end.
	reattach bool
}

// startLiveSave takes the snapshot point of an armed live checkpoint and
// returns once the VM runs again. A running VM is copied while it runs
// and paused only for its last few pages (startPrecopy); a stopped one (a
// VM with disks, copied at the cut, or one that could not be fenced) is
// run again by QEMU at its snapshot point while its memory, as it was
// then, streams on (startBackground): wait on ls.done for the stream.
func (vm *VM) startLiveSave(ctx context.Context, mon *qmp.Client, a *liveArm, round *Round, fence bool, progress func(Progress)) (*liveSave, error) {
	st, err := mon.Status(ctx)
	if err != nil {
		a.disarm(mon)
		return nil, err
	}
	dir := a.dir
	ls := &liveSave{dir: dir, done: make(chan struct{})}
	m := Manifest{Version: 1, VM: vm.name, Spec: vm.Spec(), CreatedAt: time.Now().UTC(),
		QEMU: mon.Version().String(), Round: round}
	m.Spec.Disks = slices.Clone(m.Spec.Disks)
	if st.Running && len(m.Spec.Disks) > 0 {
		a.disarm(mon)
		return nil, fmt.Errorf("vm %q: a live checkpoint copies disks at its cut, so the vm must be stopped first: %w", vm.name, ErrInvalidState)
	}
	if st.Running && vm.h.cfg.LiveMode == "precopy" {
		return vm.startPrecopy(ctx, mon, a, ls, m, fence, progress)
	}
	for i, d := range m.Spec.Disks {
		name := "disk-" + d.ID + "." + d.Format
		fd, err := copyFileDigest(d.Path, filepath.Join(dir, name))
		if err != nil {
			a.disarm(mon)
			return nil, fmt.Errorf("vm %q: copy disk %q: %w", vm.name, d.ID, err)
		}
		fd.Role, fd.ID = "disk", d.ID
		m.Files = append(m.Files, fd)
		m.Spec.Disks[i].Path = name
	}
	return vm.startBackground(ctx, mon, a, ls, m)
}

// startBackground: QEMU's background-snapshot of a stopped VM (see the
// comment at the top).
func (vm *VM) startBackground(ctx context.Context, mon *qmp.Client, a *liveArm, ls *liveSave, m Manifest) (*liveSave, error) {
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": true}); err != nil {
		a.disarm(mon)
		return nil, fmt.Errorf("vm %q: %w: %v", vm.name, ErrLiveUnsupported, err)
	}
	// One snapshot point at a time on this machine, each with its catch-up
	// (see catchUp): the point is a burst of CPU (device state,
	// write-protecting all RAM) during which its VM stands still, and
	// right after it the guest's first writes fault into the stream's
	// thread; several at once stretch every one of them. The job's
	// network fence keeps the cut consistent whatever the order.
	release, err := lockMachine(ctx, snapshotLock)
	switch {
	case ctx.Err() != nil:
		a.disarm(mon)
		return nil, ctx.Err()
	case err != nil:
		// An optimization, not a condition: go on unserialized.
		vm.log.Warn("snapshot points not serialized on this machine", "err", err)
		release = func() {}
	}
	defer func() {
		if release != nil {
			release()
		}
	}()
	events, unsubscribe := mon.Subscribe("STOP", "RESUME")
	defer unsubscribe()
	pid := vm.pid()
	// From migrate to a little after the snapshot point the VM goes first
	// on a busy host: the stream's set-up holds QEMU's big lock (which
	// stalls the guest's I/O), the snapshot point needs the main loop and
	// the vCPUs to answer, and a guest that waits for a CPU after it is as
	// stalled as a paused one. The stream's thread, born of the boosted
	// main loop, shares the boost until then.
	unboost := boostVM(pid, snapshotNice)
	defer func() {
		if unboost != nil {
			unboost()
		}
	}()
	if err := mon.Migrate(ctx, "fd:"+liveFD); err != nil {
		a.disarm(mon)
		return nil, err
	}
	a.used = true
	f := a.f
	// The stream outlives the request that started it.
	sctx, stop := context.WithCancelCause(context.Background())
	go func() {
		defer close(ls.done)
		defer a.disarm(mon)
		defer f.Close()
		defer stop(nil)
		info, err := mon.WaitMigration(sctx, 50*time.Millisecond, nil)
		ls.downtime = time.Duration(info.Downtime) * time.Millisecond
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			mon.MigrateCancel(cctx)
			cancel()
		}
		vm.endStream(ls, f, m, err)
	}()
	// The snapshot point: QEMU has stopped the vCPUs (if they ran), saved
	// the devices and armed the write protection when it runs them again.
	var stopped time.Time
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil // the monitor is gone: ls.done follows
				continue
			}
			at := qmp.EventTime(ev)
			if ev.Event == "STOP" {
				stopped = at
				continue
			}
			vm.pointTaken(ls, stopped, at)
			end, rel := unboost, release
			time.AfterFunc(catchUp, func() { end(); rel() })
			unboost, release = nil, nil
			return ls, nil
		case <-ls.done:
			if ls.err == nil {
				return ls, nil // a tiny VM: already complete
			}
			return nil, ls.err
		case <-ctx.Done():
			stop(ctx.Err())
			<-ls.done
			return nil, ctx.Err()
		}
	}
}

// precopyDowntime is the pause QEMU aims at when it stops a VM for the
// last pages of a live checkpoint (its downtime-limit). It needs the
// guest to dirty pages more slowly than the disk takes them; converge
// raises it for one that does not.
const precopyDowntime = 5 * time.Millisecond

// precopyPasses is how many passes over the dirty pages a live
// checkpoint makes at precopyDowntime before converge starts doubling it.
const precopyPasses = 8

// startPrecopy copies a running VM's memory while it runs, as a
// migration does, into the checkpoint: QEMU sends all of RAM, then the
// pages the guest dirtied meanwhile, again and again, until what is left
// fits in precopyDowntime; then it stops the vCPUs, sends the rest and
// the devices' state, and the VM is run again at once. The snapshot point
// is that stop: a pause of a few milliseconds at any memory size, with no
// write-protection of guest RAM (which costs QEMU 7.2 tens of
// milliseconds per GiB inside the pause) and no guest write ever waiting
// for the stream (the background snapshot's write faults). The job's
// network fence makes the cut consistent across VMs whatever their
// points' order; it is held for the copy.
//
// The stream runs through a pipe that hostd drains into the reserved
// file, so the stream lives no longer than hostd: a hostd that dies
// breaks it (EPIPE), QEMU fails the migration and the VM runs on, never
// left stopped at the end of a copy nobody would resume. A write error
// (a disk full past the reserved room) fails it the same way, safely:
// unlike a background snapshot, a migration that fails runs its VM on.
//
// With fence, the VM's network is fenced at that stop, before it runs
// again: the job's cut (fence.go).
func (vm *VM) startPrecopy(ctx context.Context, mon *qmp.Client, a *liveArm, ls *liveSave, m Manifest, fence bool, progress func(Progress)) (*liveSave, error) {
	if progress == nil {
		progress = func(Progress) {}
	}
	var params struct {
		Downtime int64 `json:"downtime-limit"`
	}
	r, w, err := os.Pipe()
	if err == nil {
		defer w.Close()
		// Big enough for QEMU's writes not to wait on hostd's reads.
		if rc, err := r.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
		}
		err = mon.GetFD(ctx, livePipeFD, w)
	}
	if err == nil {
		err = mon.Execute(ctx, "query-migrate-parameters", nil, &params)
	}
	if err == nil {
		err = mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": precopyDowntime.Milliseconds()})
	}
	restoreParams := func() {
		if params.Downtime > 0 {
			pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			mon.MigrateSetParameters(pctx, map[string]any{"downtime-limit": params.Downtime})
			cancel()
		}
	}
	if err != nil {
		if r != nil {
			r.Close()
		}
		restoreParams()
		a.disarm(mon)
		return nil, fmt.Errorf("vm %q: live checkpoint: %w", vm.name, err)
	}
	events, unsubscribe := mon.Subscribe("STOP", "RESUME", "MIGRATION")
	defer unsubscribe()
	f := a.f
	drained := make(chan error, 1)
	go func() {
		drained <- drain(r, f)
		// A reader gone makes QEMU's next write fail: the migration fails.
		r.Close()
	}()
	if err := mon.Migrate(ctx, "fd:"+livePipeFD); err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		mon.CloseFD(cctx, livePipeFD)
		cancel()
		r.Close()
		restoreParams()
		a.disarm(mon)
		return nil, fmt.Errorf("vm %q: live checkpoint: %w", vm.name, err)
	}
	w.Close() // QEMU has its own: its close at the stream's end is our EOF
	a.used = true
	vm.log.Info("live checkpoint copy started", "downtime_limit", precopyDowntime)
	pid := vm.pid()
	// The copy yields to every vCPU on the host: a guest waiting for a
	// CPU is stalled, a copy that waits only takes longer.
	for _, tid := range qemuThreads(pid) {
		if threadName(pid, tid) == "live_migration" {
			unix.Setpriority(unix.PRIO_PROCESS, tid, streamNice)
		}
	}
	// The copy's end (nil: completed) from the goroutine that follows it,
	// which waits for pointDone before it makes sure the VM runs: the
	// fence goes up between the two.
	copyEnded := make(chan error, 1)
	pointDone := make(chan struct{})
	endPoint := sync.OnceFunc(func() { close(pointDone) })
	defer endPoint()
	sctx, stop := context.WithCancelCause(context.Background())
	go func() {
		defer close(ls.done)
		defer a.disarm(mon)
		defer f.Close()
		defer restoreParams()
		defer stop(nil)
		dl := precopyDowntime
		info, err := mon.WaitMigration(sctx, 50*time.Millisecond, func(mi qmp.MigrationInfo) {
			progress(Progress{Phase: "copy", Transferred: mi.RAM.Transferred, Total: mi.RAM.Total,
				Remaining: mi.RAM.Remaining, MbPS: mi.RAM.MbPS})
			// A guest that dirties memory faster than the disk takes it
			// never fits in precopyDowntime: give it a longer pause
			// rather than no checkpoint.
			if want := converge(mi.RAM.DirtySyncCount); want > dl {
				dl = want
				vm.log.Info("live checkpoint: the guest dirties memory fast; longer pause allowed", "downtime_limit", dl, "passes", mi.RAM.DirtySyncCount)
				mon.MigrateSetParameters(sctx, map[string]any{"downtime-limit": dl.Milliseconds()})
			}
		})
		ls.downtime = time.Duration(info.Downtime) * time.Millisecond
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			mon.MigrateCancel(cctx)
			cancel()
			r.Close()
		}
		copyEnded <- err
		<-pointDone
		// Whatever happened, the VM runs on: a copy that completed just as
		// the request ended left it stopped (postmigrate).
		vm.runAfterCopy(mon)
		if derr := <-drained; err == nil && derr != nil {
			err = fmt.Errorf("write stream: %w", derr)
		}
		vm.endStream(ls, f, m, err)
	}()
	var stopped time.Time
	var unboost func()
	defer func() {
		if unboost != nil {
			unboost()
		}
	}()
	var fenceErr error
	fenced, pointed, resumed := false, false, false
	fenceNow := func() {
		if fence && !fenced {
			fenced = true
			fenceErr = vm.fence(context.WithoutCancel(ctx), mon)
		}
	}
	// point: the copy is complete and QEMU holds the VM stopped; fence it
	// if asked (and not yet done), then run it.
	point := func() {
		if pointed {
			return
		}
		pointed = true
		fenceNow()
		resumed = vm.runAfterCopy(mon)
		endPoint()
	}
	// done: the point is behind; the stream's end is the caller's.
	done := func(at time.Time) (*liveSave, error) {
		vm.pointTaken(ls, stopped, at)
		if fenceErr != nil {
			<-ls.done
			os.RemoveAll(ls.dir)
			return nil, fenceErr
		}
		return ls, nil
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil // the monitor is gone: ls.done follows
				continue
			}
			at := qmp.EventTime(ev)
			switch ev.Event {
			case "STOP":
				// The last pages and the devices: the VM stands still
				// until they are out, so it goes first now.
				stopped = at
				unboost = boostVM(pid, snapshotNice)
				// The vCPUs are stopped for good until hostd runs them:
				// the fence goes up while QEMU sends the last pages
				// (QEMU takes it once it has).
				fenceNow()
			case "MIGRATION":
				if ev.Data["status"] == "completed" {
					point()
					if !resumed {
						return done(timeNow())
					}
				}
			case "RESUME":
				if pointed {
					return done(at)
				}
			}
		case err := <-copyEnded:
			if err != nil {
				endPoint()
				<-ls.done
				return nil, ls.err
			}
			// Completed: in case its event was missed.
			point()
			if !resumed {
				return done(timeNow())
			}
		case <-ctx.Done():
			stop(ctx.Err())
			endPoint()
			<-ls.done
			return nil, ctx.Err()
		}
	}
}

// converge is the downtime-limit a live checkpoint's copy allows after
// passes passes over dirty pages: precopyDowntime, doubled per pass past
// precopyPasses, at most 2 s (QEMU then stops the VM for what is left).
func converge(passes int64) time.Duration {
	n := passes - precopyPasses
	if n <= 0 {
		return precopyDowntime
	}
	return min(precopyDowntime<<min(n, 20), 2*time.Second)
}

// runAfterCopy runs a VM whose live checkpoint copy has completed. QEMU
// announces the completion a moment before it marks the VM postmigrate
// (a cont in between would be undone), so it waits for that mark; a VM
// in any other state is left as it is.
func (vm *VM) runAfterCopy(mon *qmp.Client) (resumed bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		st, err := mon.Status(ctx)
		if err != nil {
			return false
		}
		switch st.Status {
		case "postmigrate":
			if err := mon.Cont(ctx); err != nil {
				vm.log.Error("run the vm after its live checkpoint copy", "err", err)
				return false
			}
			return true
		case "finish-migrate":
			time.Sleep(100 * time.Microsecond)
		default:
			return false
		}
	}
}

// drain copies the pipe r into f (at f's offset) until EOF, by splice: the
// stream does not pass through hostd's memory.
func drain(r, f *os.File) error {
	rc, err := r.SyscallConn()
	if err != nil {
		return err
	}
	out := int(f.Fd())
	for {
		var n int64
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			n, serr = unix.Splice(int(fd), nil, out, nil, 1<<20, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			return serr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return err
		case serr != nil:
			return serr
		case n == 0:
			return nil
		}
	}
}

// pointTaken records the snapshot point: the vCPUs ran again at at, after
// standing still since stopped (QEMU's STOP event, or hostd's stop for the
// job's cut).
func (vm *VM) pointTaken(ls *liveSave, stopped, at time.Time) {
	ls.at = at
	vm.mu.Lock()
	if stopped.IsZero() {
		stopped = vm.stoppedAt
	}
	vm.stoppedAt = time.Time{}
	vm.mu.Unlock()
	if !stopped.IsZero() {
		ls.pause = at.Sub(stopped)
		vm.h.metrics.pause.Observe(ls.pause.Seconds())
	}
	vm.log.Info("snapshot point taken", "pause", ls.pause)
}

// endStream finishes a stream that QEMU has written whole into f (err
// nil), f's offset at its end: what was reserved past it goes, the file is
// synced and hashed, and the manifest written last. On any error the
// checkpoint's files go and ls.err says why; the VM runs on.
func (vm *VM) endStream(ls *liveSave, f *os.File, m Manifest, err error) {
	var fd FileDigest
	if err == nil {
		err = atLowestPriority(func() error {
			end, err := f.Seek(0, io.SeekCurrent)
			if err == nil {
				err = f.Truncate(end)
			}
			if err == nil {
				err = f.Sync()
			}
			if err == nil {
				fd, err = hashFile(f.Name())
			}
			return err
		})
	}
	if err == nil {
		fd.Role = "state"
		m.Files = append(m.Files, fd)
		err = vm.h.writeManifest(ls.dir, m)
	}
	if err != nil {
		os.RemoveAll(ls.dir)
		ls.err = fmt.Errorf("vm %q: live checkpoint stream: %w", vm.name, err)
		vm.log.Error("live checkpoint failed; the vm runs on untouched", "err", ls.err)
		return
	}
	ls.m = m
	vm.log.Info("live checkpoint stream complete", "dir", ls.dir, "bytes", fd.Size)
}

func (vm *VM) pid() int {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.rt.PID
}

// streamNice is the stream thread's nice value after catchUp. On a host
// short of cores the streams compete with the vCPUs they protect, and a
// guest waiting for a CPU is as stalled as a paused one, so the stream
// yields to everything; a vCPU blocked on a write fault is not runnable,
// which leaves the stream a core to serve it.
const streamNice = 19

// snapshotNice is the nice value of a VM's QEMU threads, its stream's
// included, from migrate to catchUp after its snapshot point.
const snapshotNice = -10

// catchUp is how long a VM keeps its boost after its snapshot point, and
// the machine's snapshot lock with it. Right after the point the guest
// writes to pages it had not yet written, and each first write waits for
// the stream's thread to save that page: boosted, and with no other VM
// taking its snapshot point meanwhile, the thread serves them at once.
// Measured with four VMs on two cores: the guests' pause at the cut
// 16-24 ms with this (six runs), 77-125 ms with the stream at nice 19
// from the point on and the next VM's point right after; the price is
// the network fence, held 50 ms longer per VM (300-370 ms instead of
// 120-130 for four).
const catchUp = 50 * time.Millisecond

// snapshotLock serializes snapshot points across the hostds of a machine
// (one in production; several in tests).
var snapshotLock = "/run/symvirt-snapshot.lock"

// lockMachine takes an exclusive flock on path, polling so that ctx can
// end the wait; release drops it.
func lockMachine(ctx context.Context, path string) (release func(), err error) {
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

// boostVM renices every thread of QEMU process pid to nice and returns
// the function that ends the boost (once; later calls do nothing): each
// thread gets its nice value back, the background-snapshot thread (named
// by -name debug-threads=on) gets streamNice, and threads born during the
// boost (which inherit it) get the main thread's.
func boostVM(pid, nice int) (unboost func()) {
	if pid <= 0 {
		return func() {}
	}
	old := map[int]int{}
	for _, tid := range qemuThreads(pid) {
		// The raw getpriority(2) is 20-nice.
		if p, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil {
			old[tid] = 20 - p
			unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for _, tid := range qemuThreads(pid) {
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
}

// qemuThreads lists the threads of process pid (none once it is gone).
func qemuThreads(pid int) []int {
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

// streamBound is the most a background snapshot of memMiB of RAM writes:
// every page with its header, the device state, and slack.
func streamBound(memMiB Size) int64 {
	ram := int64(memMiB) << 20
	return ram + ram/256 + 64<<20
}

// reserve allocates n bytes for f, so that writing them cannot fail for
// want of room.
func reserve(f *os.File, n int64) error {
	if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		return fmt.Errorf("reserve %d MiB for the live stream in %s: %w", n>>20, f.Name(), err)
	}
	return nil
}

// liveSaveNow arms (unless the coordinator's detach step already did)
// and takes the snapshot point.
//
// fence (a job's checkpoint) fences a running VM's network at its
// snapshot point, before it runs again (see fence.go).
func (vm *VM) liveSaveNow(ctx context.Context, mon *qmp.Client, dir string, round *Round, bandwidth int64, fence bool, progress func(Progress)) (*liveSave, error) {
	vm.mu.Lock()
	a := vm.armed
	vm.armed = nil
	vm.mu.Unlock()
	if a != nil && a.dir != dir {
		a.disarm(mon)
		a = nil
	}
	if a == nil {
		var err error
		if a, err = vm.armLive(ctx, mon, dir, bandwidth); err != nil {
			return nil, err
		}
	}
	return vm.startLiveSave(ctx, mon, a, round, fence, progress)
}

// dropArm disarms a live checkpoint that was armed and never started (the
// operation rolled back).
func (vm *VM) dropArm() {
	vm.mu.Lock()
	a := vm.armed
	vm.armed = nil
	vm.mu.Unlock()
	if a == nil {
		return
	}
	if mon, err := vm.monitor(); err == nil {
		a.disarm(mon)
	} else if a.f != nil {
		a.f.Close()
	}
}

// atLowestPriority runs fn on a thread of the lowest priority: syncing
// (the kernel writes the pages back on the caller's time) and hashing a
// stream take tens of milliseconds of CPU per 256 MiB, which the job's
// vCPUs and the other VMs' streams (serving their guests' write faults)
// need more.
func atLowestPriority(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		// The thread dies with this goroutine (locked, never unlocked).
		runtime.LockOSThread()
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
		ch <- fn()
	}()
	return <-ch
}

func hashFile(path string) (FileDigest, error) {
	fd := FileDigest{Name: filepath.Base(path)}
	f, err := os.Open(path)
	if err != nil {
		return fd, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fd, fmt.Errorf("read back %s: %w", path, err)
	}
	fd.Size, fd.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	return fd, nil
}

// wait waits for the stream and returns the manifest.
func (ls *liveSave) wait(ctx context.Context) (Manifest, error) {
	select {
	case <-ls.done:
		return ls.m, ls.err
	case <-ctx.Done():
		return Manifest{}, ctx.Err()
	}
}

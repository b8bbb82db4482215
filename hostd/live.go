package hostd

import (
	"context"
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

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/symvirt/symvirt/hostd/manifest"
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
	// cut runs while a running VM stands still at its precopy snapshot
	// point, before it runs again: a job's network fence (fence.go). A
	// lone VM's checkpoint has none.
	cut func(context.Context, *qmp.Client) error
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
func (vm *VM) startLiveSave(ctx context.Context, mon *qmp.Client, a *liveArm, round *Round, progress func(Progress)) (*liveSave, error) {
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
		return vm.startPrecopy(ctx, mon, a, ls, m, progress)
	}
	for i, d := range m.Spec.Disks {
		name := "disk-" + d.ID + "." + d.Format
		fd, err := manifest.CopyFile(d.Path, filepath.Join(dir, name))
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
	release, err := vm.serializePoints(ctx)
	if err != nil {
		a.disarm(mon)
		return nil, err
	}
	events, unsubscribe := mon.Subscribe("STOP", "RESUME")
	defer unsubscribe()
	// From migrate to a little after the snapshot point the VM goes first
	// on a busy host: the stream's set-up holds QEMU's big lock (which
	// stalls the guest's I/O), the snapshot point needs the main loop and
	// the vCPUs to answer, and a guest that waits for a CPU after it is as
	// stalled as a paused one. The stream's thread, born of the boosted
	// main loop, shares the boost until then.
	unboost := boostVM(vm.pid(), snapshotNice)
	endBoost := func() { unboost(); release() }
	if err := mon.Migrate(ctx, "fd:"+liveFD); err != nil {
		endBoost()
		a.disarm(mon)
		return nil, err
	}
	a.used = true
	// The stream outlives the request that started it.
	sctx, stop := context.WithCancelCause(context.Background())
	go vm.followBackground(sctx, stop, mon, a, ls, m)
	pointed, err := vm.awaitBackgroundPoint(ctx, stop, events, ls)
	if !pointed {
		endBoost()
		if err != nil {
			return nil, err
		}
		return ls, nil // a tiny VM: already complete
	}
	time.AfterFunc(catchUp, endBoost)
	return ls, nil
}

// serializePoints takes this machine's snapshot lock: one snapshot point
// at a time, each with its catch-up (see catchUp). The point is a burst of
// CPU (device state, write-protecting all RAM) during which its VM stands
// still, and right after it the guest's first writes fault into the
// stream's thread; several at once stretch every one of them. The job's
// network fence keeps the cut consistent whatever the order.
func (vm *VM) serializePoints(ctx context.Context) (release func(), err error) {
	release, err = lockMachine(ctx, snapshotLock)
	switch {
	case ctx.Err() != nil:
		if err == nil {
			release()
		}
		return nil, ctx.Err()
	case err != nil:
		// An optimization, not a condition: go on unserialized.
		vm.log.Warn("snapshot points not serialized on this machine", "err", err)
		return func() {}, nil
	}
	return release, nil
}

// followBackground waits for a background snapshot's stream to end and
// finishes it (endStream).
func (vm *VM) followBackground(sctx context.Context, stop context.CancelCauseFunc, mon *qmp.Client, a *liveArm, ls *liveSave, m Manifest) {
	f := a.f
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
}

// awaitBackgroundPoint waits for the snapshot point: QEMU has stopped the
// vCPUs (if they ran), saved the devices and armed the write protection
// when it runs them again. It reports whether the point was taken; if not,
// the stream has ended (err nil: complete already) or ctx has.
func (vm *VM) awaitBackgroundPoint(ctx context.Context, stop context.CancelCauseFunc, events <-chan goqmp.Event, ls *liveSave) (pointed bool, err error) {
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
			return true, nil
		case <-ls.done:
			return false, ls.err
		case <-ctx.Done():
			stop(ctx.Err())
			<-ls.done
			return false, ctx.Err()
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
// The arm's cut (a job's network fence, fence.go) runs at that stop,
// before the VM runs again.
func (vm *VM) startPrecopy(ctx context.Context, mon *qmp.Client, a *liveArm, ls *liveSave, m Manifest, progress func(Progress)) (*liveSave, error) {
	if progress == nil {
		progress = func(Progress) {}
	}
	p := &precopy{vm: vm, mon: mon, a: a, ls: ls, drained: make(chan error, 1),
		copyEnded: make(chan error, 1), pointDone: make(chan struct{})}
	p.endPoint = sync.OnceFunc(func() { close(p.pointDone) })
	defer p.endPoint()
	events, unsubscribe := mon.Subscribe("STOP", "RESUME", "MIGRATION")
	defer unsubscribe()
	if err := p.start(ctx); err != nil {
		return nil, fmt.Errorf("vm %q: live checkpoint: %w", vm.name, err)
	}
	sctx, stop := context.WithCancelCause(context.Background())
	go p.follow(sctx, stop, m, progress)
	return p.awaitPoint(ctx, stop, events)
}

// precopy is one running VM's live checkpoint copy (startPrecopy).
type precopy struct {
	vm  *VM
	mon *qmp.Client
	a   *liveArm
	ls  *liveSave
	r   *os.File // the pipe's read end, drained into a.f
	// downtime is QEMU's downtime-limit before the copy (ms), restored
	// after it.
	downtime int64
	drained  chan error
	// copyEnded gets the copy's end (nil: completed) from follow, which
	// waits for pointDone before it makes sure the VM runs: the cut goes
	// up between the two.
	copyEnded chan error
	pointDone chan struct{}
	endPoint  func()
	// The snapshot point as awaitPoint sees it.
	stopped                   time.Time
	unboost                   func()
	cutErr                    error
	cutDone, pointed, resumed bool
}

// start hands QEMU the pipe's write end, sets the copy's downtime-limit
// and starts the copy, drained into the reserved file. On failure
// nothing of it is left.
func (p *precopy) start(ctx context.Context) error {
	r, w, err := os.Pipe()
	if err != nil {
		p.a.disarm(p.mon)
		return err
	}
	// QEMU has its own: its close at the stream's end is our EOF.
	defer w.Close()
	p.r = r
	// Big enough for QEMU's writes not to wait on hostd's reads.
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
	var params struct {
		Downtime int64 `json:"downtime-limit"`
	}
	err = p.mon.GetFD(ctx, livePipeFD, w)
	if err == nil {
		err = p.mon.Execute(ctx, "query-migrate-parameters", nil, &params)
	}
	p.downtime = params.Downtime
	if err == nil {
		err = p.mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": precopyDowntime.Milliseconds()})
	}
	if err == nil {
		go func() {
			p.drained <- drain(r, p.a.f)
			// A reader gone makes QEMU's next write fail: the migration fails.
			r.Close()
		}()
		if err = p.mon.Migrate(ctx, "fd:"+livePipeFD); err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			p.mon.CloseFD(cctx, livePipeFD)
			cancel()
		}
	}
	if err != nil {
		r.Close()
		p.restoreParams()
		p.a.disarm(p.mon)
		return err
	}
	p.a.used = true
	p.vm.log.Info("live checkpoint copy started", "downtime_limit", precopyDowntime)
	// The copy yields to every vCPU on the host: a guest waiting for a
	// CPU is stalled, a copy that waits only takes longer.
	pid := p.vm.pid()
	for _, tid := range qemuThreads(pid) {
		if threadName(pid, tid) == "live_migration" {
			unix.Setpriority(unix.PRIO_PROCESS, tid, streamNice)
		}
	}
	return nil
}

func (p *precopy) restoreParams() {
	if p.downtime > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p.mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": p.downtime})
		cancel()
	}
}

// follow waits for the copy's end; once the point is behind (or will not
// come), it makes sure the VM runs (a copy that completed just as the
// request ended left it stopped, postmigrate) and finishes the stream.
func (p *precopy) follow(sctx context.Context, stop context.CancelCauseFunc, m Manifest, progress func(Progress)) {
	f := p.a.f
	defer close(p.ls.done)
	defer p.a.disarm(p.mon)
	defer f.Close()
	defer p.restoreParams()
	defer stop(nil)
	info, err := p.mon.WaitMigration(sctx, 50*time.Millisecond, p.converger(sctx, progress))
	p.ls.downtime = time.Duration(info.Downtime) * time.Millisecond
	if err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		p.mon.MigrateCancel(cctx)
		cancel()
		p.r.Close()
	}
	p.copyEnded <- err
	<-p.pointDone
	p.vm.runAfterCopy(p.mon)
	if derr := <-p.drained; err == nil && derr != nil {
		err = fmt.Errorf("write stream: %w", derr)
	}
	p.vm.endStream(p.ls, f, m, err)
}

// converger reports the copy's progress and gives a guest that dirties
// memory faster than the disk takes it (it never fits in
// precopyDowntime) a longer pause rather than no checkpoint.
func (p *precopy) converger(ctx context.Context, progress func(Progress)) func(qmp.MigrationInfo) {
	dl := precopyDowntime
	return func(mi qmp.MigrationInfo) {
		progress(Progress{Phase: "copy", Transferred: mi.RAM.Transferred, Total: mi.RAM.Total,
			Remaining: mi.RAM.Remaining, MbPS: mi.RAM.MbPS})
		if want := converge(mi.RAM.DirtySyncCount); want > dl {
			dl = want
			p.vm.log.Info("live checkpoint: the guest dirties memory fast; longer pause allowed", "downtime_limit", dl, "passes", mi.RAM.DirtySyncCount)
			p.mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": dl.Milliseconds()})
		}
	}
}

// awaitPoint follows QEMU's events to the snapshot point: the copy
// complete, the VM held stopped by QEMU, its cut up, and the VM run again.
func (p *precopy) awaitPoint(ctx context.Context, stop context.CancelCauseFunc, events <-chan goqmp.Event) (*liveSave, error) {
	defer func() {
		if p.unboost != nil {
			p.unboost()
		}
	}()
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
				// until they are out, so it goes first now, and its cut
				// goes up (QEMU holds it stopped until hostd runs it).
				p.stopped = at
				p.unboost = boostVM(p.vm.pid(), snapshotNice)
				p.cut(ctx)
			case "MIGRATION":
				if ev.Data["status"] == "completed" {
					p.point(ctx)
					if !p.resumed {
						return p.taken(timeNow())
					}
				}
			case "RESUME":
				if p.pointed {
					return p.taken(at)
				}
			}
		case err := <-p.copyEnded:
			if err != nil {
				p.endPoint()
				<-p.ls.done
				return nil, p.ls.err
			}
			// Completed: in case its event was missed.
			p.point(ctx)
			if !p.resumed {
				return p.taken(timeNow())
			}
		case <-ctx.Done():
			stop(ctx.Err())
			p.endPoint()
			<-p.ls.done
			return nil, ctx.Err()
		}
	}
}

// cut runs the arm's cut once, while the vCPUs stand still.
func (p *precopy) cut(ctx context.Context) {
	if p.a.cut != nil && !p.cutDone {
		p.cutDone = true
		p.cutErr = p.a.cut(context.WithoutCancel(ctx), p.mon)
	}
}

// point: the copy is complete and QEMU holds the VM stopped; its cut goes
// up (if not yet), then it runs.
func (p *precopy) point(ctx context.Context) {
	if p.pointed {
		return
	}
	p.pointed = true
	p.cut(ctx)
	p.resumed = p.vm.runAfterCopy(p.mon)
	p.endPoint()
}

// taken: the point is behind; the stream's end is the caller's. A cut
// that failed fails the checkpoint.
func (p *precopy) taken(at time.Time) (*liveSave, error) {
	p.vm.pointTaken(p.ls, p.stopped, at)
	if p.cutErr != nil {
		<-p.ls.done
		os.RemoveAll(p.ls.dir)
		return nil, p.cutErr
	}
	return p.ls, nil
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
				fd, err = manifest.HashFile(f.Name())
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

// takeArm returns the live checkpoint the arm step made ready in dir, or
// arms one there now (the arm step failed, or hostd restarted since).
func (vm *VM) takeArm(ctx context.Context, mon *qmp.Client, dir string, bandwidth int64) (*liveArm, error) {
	vm.mu.Lock()
	a := vm.armed
	vm.armed = nil
	vm.mu.Unlock()
	if a != nil && a.dir == dir {
		return a, nil
	}
	if a != nil {
		a.disarm(mon)
	}
	if err := freshDir(dir); err != nil {
		return nil, err
	}
	a, err := vm.armLive(ctx, mon, dir, bandwidth)
	if err != nil {
		os.RemoveAll(dir)
	}
	return a, err
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

// wait waits for the stream and returns the manifest.
func (ls *liveSave) wait(ctx context.Context) (Manifest, error) {
	select {
	case <-ls.done:
		return ls.m, ls.err
	case <-ctx.Done():
		return Manifest{}, ctx.Err()
	}
}

// ErrStreamLost: a job's live checkpoint stream was being written when
// hostd died. It cannot be vouched for: a precopy's pipe went with hostd
// (QEMU failed the copy), and a background snapshot's file gets no
// manifest from a hostd that did not follow it. The checkpoint fails; its
// partial files are removed when hostd starts again.
var ErrStreamLost = errors.New("stream lost: hostd restarted")

// liveStream is a VM's persisted record of its job's live stream, from the
// point step until the stream ends (or, once Lost, until the next point).
type liveStream struct {
	Op   string `json:"op"`
	Dir  string `json:"dir"`
	Lost bool   `json:"lost,omitempty"`
}

// streamStarts records, before the point step starts it, that a stream
// into dir is in flight.
func (vm *VM) streamStarts(op, dir string) {
	vm.mu.Lock()
	vm.rt.Stream = &liveStream{Op: op, Dir: dir}
	vm.saveRuntime()
	vm.mu.Unlock()
}

// streamEnded drops the record of the stream into dir: it completed (its
// manifest is written) or failed (its files are gone, the failure is the
// wait-save's answer).
func (vm *VM) streamEnded(dir string) {
	vm.mu.Lock()
	if s := vm.rt.Stream; s != nil && s.Dir == dir && !s.Lost {
		vm.rt.Stream = nil
		vm.saveRuntime()
	}
	vm.mu.Unlock()
}

// lostStream is ErrStreamLost if dir's stream was lost with a hostd.
func (vm *VM) lostStream(dir string) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if s := vm.rt.Stream; s != nil && s.Dir == dir && s.Lost {
		return fmt.Errorf("vm %q: live checkpoint %s of operation %s: %w", vm.name, dir, s.Op, ErrStreamLost)
	}
	return nil
}

// loseStream, when hostd starts, settles the stream the hostd before it
// left in flight: one that wrote its manifest completed; any other is
// lost, and its partial files go (a background snapshot QEMU still writes
// goes on into a file no longer there).
func (vm *VM) loseStream() {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	s := vm.rt.Stream
	if s == nil || s.Lost {
		return
	}
	if _, err := os.Stat(filepath.Join(s.Dir, manifestName)); err == nil {
		vm.rt.Stream = nil
	} else {
		if err := os.RemoveAll(s.Dir); err != nil {
			vm.log.Error("remove a lost live checkpoint's files", "dir", s.Dir, "err", err)
		}
		s.Lost = true
		vm.log.Warn("the live checkpoint stream in flight when hostd stopped is lost", "op", s.Op, "dir", s.Dir)
	}
	vm.saveRuntime()
}

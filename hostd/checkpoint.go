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
	"slices"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/qmp"
)

// Progress is reported during long operations.
type Progress struct {
	Phase       string  `json:"phase"`
	Transferred int64   `json:"transferred,omitempty"`
	Total       int64   `json:"total,omitempty"`
	Remaining   int64   `json:"remaining,omitempty"`
	MbPS        float64 `json:"mbps,omitempty"`
}

// ProgressFunc receives progress; it must not block.
type ProgressFunc func(Progress)

// CheckpointOptions control Checkpoint.
type CheckpointOptions struct {
	Dir string `json:"dir"`
	// Stop leaves the VM stopped (QEMU quit) after a successful checkpoint
	// instead of resuming it.
	Stop bool `json:"stop,omitempty"`
	// NoGuest skips the cooperation round even when the VM has a channel.
	NoGuest bool `json:"no_guest,omitempty"`
	// Live copies the VM's memory while it runs and pauses it only for
	// the snapshot point at the end (a VM with disks: stopped for their
	// copy, then a background snapshot; live.go). Where QEMU or the
	// kernel cannot, the stop-and-save path runs and
	// CheckpointResult.Fallback says why.
	Live bool `json:"live,omitempty"`
	// Bandwidth caps a live checkpoint's stream (bytes/s; 0: none).
	Bandwidth int64 `json:"bandwidth,omitempty"`
}

// CheckpointResult reports a finished checkpoint.
type CheckpointResult struct {
	Dir      string        `json:"dir"`
	Manifest Manifest      `json:"manifest"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"duration_ns"`
	// Downtime is how long the vCPUs were stopped (a live checkpoint:
	// QEMU's own figure for its snapshot point).
	Downtime time.Duration `json:"downtime_ns"`
	// Pause (live): the snapshot point's pause from QEMU's STOP and RESUME
	// events, on the host's clock.
	Pause time.Duration `json:"pause_ns,omitempty"`
	// SnapshotAt (live): when the vCPUs ran again after the snapshot point.
	SnapshotAt time.Time `json:"snapshot_at,omitzero"`
	Live       bool      `json:"live,omitempty"`
	Fallback   string    `json:"fallback,omitempty"` // why a live checkpoint was taken stop-and-save
}

// Checkpoint saves the VM's memory and device state (and copies its disks)
// into opts.Dir, a one-VM operation of the coordinator's machine: guest
// cooperation round, detach passthrough devices, stop, save, re-attach,
// resume; live, the VM runs on through the copy and stands still only for
// its snapshot point. On any failure the machine rolls it back: the partial
// directory is removed and the VM runs as it was.
func (vm *VM) Checkpoint(ctx context.Context, opts CheckpointOptions, progress ProgressFunc) (res CheckpointResult, err error) {
	start := timeNow()
	defer func() { vm.h.metrics.observe("checkpoint", resultLabel(err), start) }()
	if opts.Dir == "" {
		return res, fmt.Errorf("checkpoint: dir is missing: %w", ErrInvalidSpec)
	}
	if opts.Dir, err = filepath.Abs(opts.Dir); err != nil {
		return res, err
	}
	if _, err := os.Lstat(opts.Dir); !errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("checkpoint dir %s: %w", opts.Dir, os.ErrExist)
	}
	o := vm.h.opOptions(opts.Dir)
	if opts.Live && (opts.Stop || !vm.running(ctx)) {
		res.Fallback = "the vm does not run on after this checkpoint"
	} else if opts.Live {
		o.Live, o.Bandwidth = true, opts.Bandwidth
	}
	d, acts, err := vm.h.newDirect(machine.KindCheckpoint, machine.VM{Name: vm.name}, o)
	if err != nil {
		return res, err
	}
	d.Dir, d.NoGuest, d.Quit, d.MaxBandwidth, d.progress = opts.Dir, opts.NoGuest, opts.Stop, opts.Bandwidth, progress
	if _, err := vm.h.runDirect(d, acts); err != nil {
		return res, err
	}
	if res.Manifest, err = ReadManifest(opts.Dir); err != nil {
		return res, err
	}
	for _, f := range res.Manifest.Files {
		res.Bytes += f.Size
	}
	res.Dir, res.Downtime, res.Duration = opts.Dir, d.resumed.Sub(d.stopped), timeNow().Sub(start)
	if o.Live {
		res.Live, res.Fallback = d.note == "", d.note
		res.Downtime, res.Pause, res.SnapshotAt = d.pause, d.pause, d.snapshotAt
	}
	vm.log.Info("checkpoint complete", "dir", opts.Dir, "live", res.Live, "bytes", res.Bytes, "downtime", res.Downtime)
	return res, nil
}

// writeCheckpoint saves a stopped VM into dir (which exists and is empty):
// state, disks, then the manifest, last, so a directory without one is
// incomplete by construction.
func (vm *VM) writeCheckpoint(ctx context.Context, mon *qmp.Client, dir string, round *Round, progress ProgressFunc) (Manifest, error) {
	m := Manifest{Version: 1, VM: vm.name, Spec: vm.Spec(), CreatedAt: time.Now().UTC(),
		QEMU: mon.Version().String(), Round: round}
	m.Spec.Disks = slices.Clone(m.Spec.Disks) // paths are rewritten below
	progress(Progress{Phase: "save"})
	fd, err := saveState(ctx, mon, filepath.Join(dir, stateName), progress)
	if err != nil {
		return m, fmt.Errorf("vm %q: save state: %w", vm.name, err)
	}
	m.Files = append(m.Files, fd)
	for i, d := range m.Spec.Disks {
		progress(Progress{Phase: "disk " + d.ID})
		name := "disk-" + d.ID + "." + d.Format
		fd, err := manifest.CopyFile(d.Path, filepath.Join(dir, name))
		if err != nil {
			return m, fmt.Errorf("vm %q: copy disk %q: %w", vm.name, d.ID, err)
		}
		fd.Role, fd.ID = "disk", d.ID
		m.Files = append(m.Files, fd)
		m.Spec.Disks[i].Path = name // relative to the checkpoint dir
	}
	if err := vm.h.writeManifest(dir, m); err != nil {
		return m, err
	}
	return m, nil
}

// saveState streams QEMU's migration stream for a stopped VM into path
// through a pipe, so hostd hashes and syncs what it writes and QEMU never
// opens files itself.
func saveState(ctx context.Context, mon *qmp.Client, path string, progress ProgressFunc) (FileDigest, error) {
	fd := FileDigest{Name: filepath.Base(path), Role: "state"}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fd, err
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fd, err
	}
	defer r.Close()
	const fdName = "symvirt-save"
	err = mon.GetFD(ctx, fdName, w)
	w.Close()
	if err != nil {
		return fd, err
	}
	// A checkpoint of a stopped VM should use the disk's full speed; QEMU's
	// default bandwidth cap (32 MiB/s) is for live migration.
	if err := mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		return fd, err
	}
	h := sha256.New()
	type copied struct {
		n   int64
		err error
	}
	done := make(chan copied, 1)
	// A write error (a full disk) must end the migration at once: QEMU
	// would otherwise block on the pipe until the deadline.
	wctx, stopWait := context.WithCancelCause(ctx)
	defer stopWait(nil)
	go func() {
		n, err := io.Copy(io.MultiWriter(f, h), r)
		if err != nil {
			err = fmt.Errorf("write %s: %w", path, err)
			stopWait(err)
			r.Close()
		}
		done <- copied{n, err}
	}()
	if err := mon.Migrate(ctx, "fd:"+fdName); err != nil {
		mon.CloseFD(context.WithoutCancel(ctx), fdName)
		r.Close()
		<-done
		return fd, err
	}
	_, err = mon.WaitMigration(wctx, 100*time.Millisecond, func(mi qmp.MigrationInfo) {
		progress(Progress{Phase: "save", Transferred: mi.RAM.Transferred, Total: mi.RAM.Total,
			Remaining: mi.RAM.Remaining, MbPS: mi.RAM.MbPS})
	})
	if err != nil {
		mon.MigrateCancel(context.WithoutCancel(ctx))
		r.Close()
		if c := <-done; c.err != nil {
			return fd, c.err // the cause: e.g. no space left on device
		}
		return fd, err
	}
	// QEMU closes its end when the stream is complete, which ends the copy.
	var c copied
	select {
	case c = <-done:
	case <-ctx.Done():
		r.Close()
		<-done
		return fd, ctx.Err()
	}
	if c.err != nil {
		return fd, c.err
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return fd, err
	}
	fd.Size, fd.SHA256 = c.n, hex.EncodeToString(h.Sum(nil))
	return fd, syncDir(filepath.Dir(path))
}

// RestoreOptions control Restore.
type RestoreOptions struct {
	Dir string `json:"dir"`
	// Name overrides the VM name (restore a copy).
	Name string `json:"name,omitempty"`
	// Paused leaves the restored VM paused with devices detached (the
	// coordinator resumes a job together).
	Paused bool `json:"paused,omitempty"`
	// NoGuest skips telling the guest.
	NoGuest bool `json:"no_guest,omitempty"`
}

// Restore starts a checkpoint's VM on this host, with passthrough devices
// from this host's pools: a one-VM restart of the coordinator's machine
// (restore paused, then attach and resume), killed again if it cannot run.
// With opts.Paused it is only the restore step: the VM stays paused with
// its devices detached for the caller to resume.
func (h *Host) Restore(ctx context.Context, opts RestoreOptions, progress ProgressFunc) (vm *VM, err error) {
	start := timeNow()
	defer func() { h.metrics.observe("restore", resultLabel(err), start) }()
	if progress == nil {
		progress = func(Progress) {}
	}
	if opts.Paused {
		return h.restorePaused(ctx, opts, progress)
	}
	if opts.Dir, err = filepath.Abs(opts.Dir); err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		m, err := h.verifiedManifest(opts.Dir)
		if err != nil {
			return nil, err
		}
		name = m.VM
	}
	d, acts, err := h.newDirect(machine.KindRestart, machine.VM{Name: name}, h.opOptions(opts.Dir))
	if err != nil {
		return nil, err
	}
	d.Dir, d.NoGuest, d.progress = opts.Dir, opts.NoGuest, progress
	if _, err := h.runDirect(d, acts); err != nil {
		return nil, err
	}
	vm, err = h.Get(name)
	if err == nil {
		vm.log.Info("restored", "from", opts.Dir, "took", timeNow().Sub(start))
	}
	return vm, err
}

// restorePaused creates the VM paused from a checkpoint. The manifest's
// signature is checked before any of it is used; each disk is hashed as it
// is copied, and the state as QEMU reads it: the VM runs only from the
// bytes the manifest signed.
func (h *Host) restorePaused(ctx context.Context, opts RestoreOptions, progress ProgressFunc) (vm *VM, err error) {
	progress(Progress{Phase: "verify"})
	m, err := h.verifiedManifest(opts.Dir)
	if err != nil {
		return nil, err
	}
	stateFile, _ := m.File("state", "")
	// Opened once: what QEMU reads is what this descriptor reads, and it
	// is hashed on the way (loadState).
	state, err := manifest.OpenInDir(opts.Dir, stateFile.Name)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", opts.Dir, err)
	}
	defer state.Close()
	spec := m.Spec
	if opts.Name != "" {
		spec.Name = opts.Name
	}
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", opts.Dir, err)
	}
	if err := h.cfg.Policy.CheckRestore(spec, opts.Dir, h.cfg.Pools); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", opts.Dir, err)
	}
	// A stopped VM of the same name is replaced; a running one is not.
	replaced := false
	if old, err := h.Get(spec.Name); err == nil {
		if old.alive() {
			return nil, fmt.Errorf("vm %q is running: %w", spec.Name, ErrExists)
		}
		h.forgetKeep(old, true)
		replaced = true
	}
	vm, err = h.create(spec)
	if err != nil {
		return nil, err
	}
	if err := vm.lock("restore"); err != nil {
		return nil, err
	}
	defer vm.unlock()
	ok := false
	created := vm // a failed return sets vm to nil
	defer func() {
		if !ok {
			created.kill()
			h.forgetKeep(created, replaced) // the replaced VM's console history stays
		}
	}()
	if err := vm.launchRestored(ctx, m, spec, opts.Dir, progress); err != nil {
		return nil, err
	}
	mon, err := vm.monitor()
	if err != nil {
		return nil, err
	}
	progress(Progress{Phase: "load"})
	if err := loadState(ctx, mon, state, stateFile, progress); err != nil {
		return nil, fmt.Errorf("vm %q: load state: %w", spec.Name, err)
	}
	vm.mu.Lock()
	vm.rt.Incoming = false
	vm.rt.Round = m.Round
	vm.saveRuntime()
	vm.mu.Unlock()
	ok = true
	return vm, nil
}

// launchRestored copies the checkpoint's disks into the VM's own
// directory (the checkpoint stays intact for another restore) and starts
// its QEMU waiting for the state, without passthrough devices.
func (vm *VM) launchRestored(ctx context.Context, m Manifest, spec Spec, dir string, progress ProgressFunc) error {
	for i, d := range spec.Disks {
		progress(Progress{Phase: "disk " + d.ID})
		f, _ := m.File("disk", d.ID) // manifest.Check: it is there, and d.Path names it
		dst := filepath.Join(vm.dir, f.Name)
		if err := manifest.CopyVerified(dir, f, dst); err != nil {
			return err
		}
		spec.Disks[i].Path = dst
	}
	vm.mu.Lock()
	vm.spec = spec
	err := writeJSON(filepath.Join(vm.dir, fileSpec), spec)
	vm.mu.Unlock()
	if err != nil {
		return err
	}
	if err := vm.allocateSlots(nil); err != nil {
		return err
	}
	absent := map[string]bool{}
	for _, id := range spec.PassthroughIDs() {
		absent[id] = true
	}
	return vm.launch(ctx, launch{incoming: true, absent: absent})
}

// loadState feeds a checkpoint's state to a QEMU started with -incoming
// defer (and -S: it stays paused) through a pipe, hashing exactly the bytes
// QEMU takes; unless they are the manifest's, it fails with ErrChecksum and
// the caller kills QEMU before the guest ever ran.
func loadState(ctx context.Context, mon *qmp.Client, f *os.File, want FileDigest, progress ProgressFunc) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer w.Close()
	const fdName = "symvirt-load"
	err = mon.GetFD(ctx, fdName, r)
	r.Close()
	if err != nil {
		return err
	}
	done := make(chan fed, 1)
	go func() {
		res := feedState(f, w)
		w.Close() // QEMU sees the stream's end
		done <- res
	}()
	err = mon.MigrateIncoming(ctx, "fd:"+fdName)
	if err == nil {
		_, err = mon.WaitMigration(ctx, 100*time.Millisecond, func(mi qmp.MigrationInfo) {
			progress(Progress{Phase: "load", Transferred: mi.RAM.Transferred, Total: mi.RAM.Total})
		})
	}
	if err != nil {
		w.Close() // the feeder stops writing and hashes the rest
	}
	var res fed
	select {
	case res = <-done:
	case <-ctx.Done():
		w.Close()
		res = <-done
	}
	return res.verdict(f.Name(), want, err)
}

// fed is what feedState read and what of it went into QEMU's pipe.
type fed struct {
	read, sent int64
	sum        string // sha256 of all read
	readErr    error
	sendErr    error
}

// testHookStateSent, when set (tests only), runs once after the first
// chunk of the state went to QEMU: a test changes the file there, as an
// attacker would while a restore runs.
var testHookStateSent func()

// feedState copies f to w, hashing it. It reads f to its end even when w
// fails (QEMU stopped reading), so that the verdict can tell a changed
// file from a QEMU error.
func feedState(f *os.File, w io.Writer) fed {
	var res fed
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			res.read += int64(n)
			if res.sendErr == nil {
				m, werr := w.Write(buf[:n])
				res.sent += int64(m)
				res.sendErr = werr
				if hook := testHookStateSent; hook != nil && res.sent == int64(m) {
					hook()
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			res.readErr = err
			break
		}
	}
	res.sum = hex.EncodeToString(h.Sum(nil))
	return res
}

// verdict: a state file that is not the manifest's is ErrChecksum, whatever
// QEMU said of it; else QEMU's error; else QEMU must have taken it whole.
func (res fed) verdict(path string, want FileDigest, qemuErr error) error {
	if res.readErr != nil {
		return fmt.Errorf("read %s: %w", path, res.readErr)
	}
	if res.read != want.Size || res.sum != want.SHA256 {
		qemu := "QEMU had loaded it: the vm is killed before it ran"
		if qemuErr != nil {
			qemu = "QEMU: " + qemuErr.Error()
		}
		return fmt.Errorf("%s as read (%d bytes, sha256 %s) does not match its signed manifest (%d bytes, sha256 %s) (%s): %w",
			path, res.read, res.sum, want.Size, want.SHA256, qemu, ErrChecksum)
	}
	if qemuErr != nil {
		return qemuErr
	}
	if res.sent != res.read {
		return fmt.Errorf("qemu took %d of the %d bytes of %s (%v): %w", res.sent, res.read, path, res.sendErr, ErrChecksum)
	}
	return nil
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

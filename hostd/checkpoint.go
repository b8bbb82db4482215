package hostd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/snapshot"
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
	// the snapshot point at the end (a VM with disks: stopped from the
	// fence to its point, where its disks are cut in O(1) and copied in
	// the background with its RAM; live.go, diskcut.go). Where QEMU or the
	// kernel cannot, the stop-and-save path runs and
	// CheckpointResult.Fallback says why.
	Live bool `json:"live,omitempty"`
	// Bandwidth caps a live checkpoint's stream (bytes/s; 0: none).
	Bandwidth int64 `json:"bandwidth,omitempty"`
}

// CheckpointResult reports a finished checkpoint.
type CheckpointResult struct {
	Dir      string   `json:"dir"`
	Manifest Manifest `json:"manifest"`
	Bytes    int64    `json:"bytes"`
	// DiskBytes is what the disks stored (a delta over the previous
	// checkpoint's disks where it could be: diskcut.go).
	DiskBytes int64         `json:"disk_bytes,omitempty"`
	Duration  time.Duration `json:"duration_ns"`
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
		if f.Role == "disk" {
			res.DiskBytes += f.Size
		}
	}
	res.Dir, res.Downtime, res.Duration = opts.Dir, d.resumed.Sub(d.stopped), timeNow().Sub(start)
	if o.Live {
		res.Live, res.Fallback = d.note == "", d.note
		res.Downtime, res.Pause, res.SnapshotAt = d.pause, d.pause, d.snapshotAt
	}
	vm.log.Info("checkpoint complete", "dir", opts.Dir, "live", res.Live, "bytes", res.Bytes, "disk_bytes", res.DiskBytes, "downtime", res.Downtime)
	return res, nil
}

// writeCheckpoint saves a stopped VM into dir (which exists and is empty):
// the disks' cut, the state, the disks' copies, then the manifest, last,
// so a directory without one is incomplete by construction.
func (vm *VM) writeCheckpoint(ctx context.Context, mon *qmp.Client, dir string) error {
	m := vm.newManifest(mon)
	cut, err := vm.cutDisks(ctx, mon, dir)
	if err != nil {
		return err
	}
	fds, err := vm.saveState(ctx, mon, dir)
	if err != nil {
		cut.abandon()
		return fmt.Errorf("vm %q: save state: %w", vm.name, err)
	}
	m.Files = append(m.Files, fds...)
	start := timeNow()
	files, err := cut.wait(ctx)
	if err != nil {
		cut.abandon()
		return err
	}
	vm.logPhase("save_disks_wait", timeNow().Sub(start))
	addDisks(&m, files)
	start = timeNow()
	defer func() { vm.logPhase("save_manifest", timeNow().Sub(start)) }()
	return vm.h.writeCheckpointManifest(dir, m)
}

// saveState saves the stopped VM's state (and its RAM file, if it has
// one hostd can copy cheaper than QEMU: snapshot.SaveShared) into dir.
func (vm *VM) saveState(ctx context.Context, mon *qmp.Client, dir string) ([]manifest.FileDigest, error) {
	var fds []manifest.FileDigest
	var times snapshot.SaveTimes
	ram, err := vm.sharedRAM()
	if err != nil {
		return nil, err
	}
	if ram != nil {
		defer ram.Close()
		fds, times, err = snapshot.SaveShared(ctx, mon, ram, dir)
	} else {
		var fd manifest.FileDigest
		fd, times, err = snapshot.SaveTimed(ctx, mon, filepath.Join(dir, stateName))
		fds = append(fds, fd)
	}
	vm.logPhase("save_stream", times.Stream)
	vm.logPhase("save_ram_copy", times.RAM)
	vm.logPhase("save_fsync", times.Sync)
	vm.logPhase("save_ram_wait", times.RAMWait)
	return fds, err
}

// newManifest starts the manifest of a checkpoint of the VM as it is now,
// in its guest cooperation round.
func (vm *VM) newManifest(mon *qmp.Client) Manifest {
	identity := vm.checkpointCloneIdentity()
	vm.mu.Lock()
	defer vm.mu.Unlock()
	m := Manifest{Version: 1, VM: vm.name, Spec: vm.spec, CreatedAt: time.Now().UTC(),
		QEMU: mon.Version().String(), Round: vm.rt.Round, CloneIdentity: identity}
	m.Spec.Disks = slices.Clone(m.Spec.Disks) // addDisks rewrites their paths
	return m
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
	start := timeNow()
	m, err := h.verifiedManifest(opts.Dir)
	if err != nil {
		return nil, err
	}
	stateFile, _ := m.File("state", "")
	// Opened once: what QEMU reads is what this descriptor reads, and it
	// is hashed on the way (snapshot.Load).
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
	if err := h.cfg.Policy.CheckRestore(wholeDisks(spec, m), opts.Dir, h.cfg.Pools); err != nil {
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
	vm, err = h.createKeeping(spec, m.CloneIdentity)
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
	vm.logPhase("restore_verify", timeNow().Sub(start))
	start = timeNow()
	if err := vm.launchRestored(ctx, m, spec, opts.Dir, progress); err != nil {
		return nil, err
	}
	vm.logPhase("restore_launch", timeNow().Sub(start))
	mon, err := vm.monitor()
	if err != nil {
		return nil, err
	}
	progress(Progress{Phase: "load"})
	start = timeNow()
	defer func() { created.logPhase("restore_load", timeNow().Sub(start)) }()
	if err := vm.loadState(ctx, mon, m, opts.Dir, state, progress); err != nil {
		return nil, fmt.Errorf("vm %q: load state: %w", spec.Name, err)
	}
	vm.populateAfterStart() // after the load, which empties the file first
	vm.mu.Lock()
	vm.rt.Incoming = false
	vm.rt.Round = m.Round
	vm.saveRuntime()
	vm.mu.Unlock()
	ok = true
	return vm, nil
}

// loadState loads the checkpoint's state (opened once: state) into the
// VM's QEMU waiting for it, and its RAM file when it has one
// (snapshot.LoadShared), each checked against the manifest as read.
func (vm *VM) loadState(ctx context.Context, mon *qmp.Client, m Manifest, dir string, state *os.File, progress ProgressFunc) error {
	stateFile, _ := m.File("state", "")
	loaded := func(mi qmp.MigrationInfo) {
		progress(Progress{Phase: "load", Transferred: mi.RAM.Transferred, Total: mi.RAM.Total})
	}
	ramFile, ok := m.File("ram", "")
	if !ok {
		return snapshot.Load(ctx, mon, state, stateFile, loaded)
	}
	dst, err := vm.sharedRAM()
	if err == nil && dst == nil {
		err = fmt.Errorf("checkpoint %s holds its RAM in a file and the vm's RAM is not a shared file here (/dev/shm): %w", dir, ErrInvalidSpec)
	}
	if err != nil {
		return err
	}
	defer dst.Close()
	src, err := manifest.OpenInDir(dir, ramFile.Name)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	defer src.Close()
	vm.mu.Lock()
	zero := vm.zeroRAM
	vm.mu.Unlock()
	return snapshot.LoadShared(ctx, mon, state, stateFile, snapshot.SharedRAM{Src: src, Dst: dst, Want: ramFile, DstZero: zero}, loaded)
}

// launchRestored assembles the checkpoint's disks into new files of the
// host's disk directory (the checkpoint stays intact for another restore)
// and starts its QEMU waiting for the state, without passthrough devices.
func (vm *VM) launchRestored(ctx context.Context, m Manifest, spec Spec, dir string, progress ProgressFunc) error {
	spec.Disks = slices.Clone(spec.Disks)
	progress(Progress{Phase: "disks"})
	made, err := vm.h.restoreDisks(ctx, dir, m, &spec)
	if err == nil {
		err = vm.h.cfg.Policy.Check(spec, vm.h.cfg.Pools)
	}
	if err != nil {
		for _, p := range made {
			os.Remove(p)
		}
		return err
	}
	vm.mu.Lock()
	vm.rt.Chain = nil // the next cut starts a chain on the restored disks
	vm.spec = spec
	err = writeJSON(filepath.Join(vm.dir, fileSpec), spec)
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
	return vm.launch(ctx, launch{incoming: true, absent: absent, pooledRAM: true})
}

// logPhase logs how long a phase of a step took, for the bench's
// breakdown (and an operator's reading) of where an operation's time goes.
func (vm *VM) logPhase(phase string, took time.Duration) {
	vm.log.Debug("phase", "phase", phase, "took", took)
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

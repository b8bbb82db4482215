package hostd

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/symvirt/symvirt/hostd/disk"
	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/qmp"
)

// A checkpoint cuts a VM's disks in O(1) where its RAM is cut (the VM
// stands still: stop-and-save, or a live checkpoint's fence): each disk
// goes on a new overlay and the image under it is the checkpoint's disk,
// which a goroutine copies into the checkpoint directory (whole the first
// time, else as a delta over the previous checkpoint's disk) while the VM
// runs. The checkpoint's manifest is written only once the copies are
// synced and hashed; if one fails, the checkpoint fails and the VM runs on
// its overlay. Then the frozen layer is committed into the disk's root,
// so the running chain is root <- overlay again. The spec's disk path is
// the active overlay (what a new QEMU of the VM opens, chain included);
// the root stays the file the operator gave, or the one a restore made.

// flattenTimeout bounds one disk's commit into its root.
const flattenTimeout = 30 * time.Minute

// diskWork orders a VM's disk work: one checkpoint's copy at a time
// (work), and no cut while a commit job holds the chain (jobs: QEMU
// refuses a snapshot of a node a job uses).
type diskWork struct {
	work sync.Mutex
	jobs sync.Mutex

	// flat is read-held while a checkpoint's disks are stored and
	// flattened: the next live checkpoint's arm waits for them, so that
	// its cut does not wait for a commit job with the VM stopped.
	flat sync.RWMutex

	mu    sync.Mutex
	ready []disk.Frozen // overlays made at the arm for the next cut
}

// prepareDisks makes the overlays of the VM's next cut while it runs (a
// live checkpoint's arm), so that it stands still only to switch to them.
func (vm *VM) prepareDisks(ctx context.Context, mon *qmp.Client) {
	for !vm.disks.flat.TryLock() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	vm.disks.flat.Unlock()
	ready, err := disk.Prepare(ctx, mon, vm.diskList())
	if err != nil {
		vm.log.Warn("disk overlays not made in advance (the cut makes them)", "err", err)
	}
	vm.disks.mu.Lock()
	old := vm.disks.ready
	vm.disks.ready = ready
	vm.disks.mu.Unlock()
	disk.Discard(old)
}

// takeReady hands the overlays made in advance to a cut (or, nil, drops
// them).
func (vm *VM) takeReady() []disk.Frozen {
	vm.disks.mu.Lock()
	defer vm.disks.mu.Unlock()
	r := vm.disks.ready
	vm.disks.ready = nil
	return r
}

func (vm *VM) diskList() []disk.Disk {
	var in []disk.Disk
	for _, d := range vm.Spec().Disks {
		in = append(in, disk.Disk{ID: d.ID, Path: d.Path, Format: d.Format})
	}
	return in
}

// chainState is persisted in the VM's runtime state.
type chainState struct {
	// Roots maps a disk to the file its layers are committed into.
	Roots map[string]string `json:"roots"`
	// Formats are the roots' formats: a raw disk's checkpoints are raw
	// copies, whole (the spec's disk is a qcow2 overlay after a cut).
	Formats map[string]string `json:"formats"`
	// Since is the checkpoint whose cut made the active layers: they hold
	// what the guest wrote since that checkpoint's disk.
	Since string `json:"since,omitempty"`
}

// diskCut is a checkpoint's disks, cut, being copied into dir.
type diskCut struct {
	dir    string
	frozen []disk.Frozen
	roots  map[string]string
	format map[string]string // of each disk's checkpoint copy
	since  string            // the checkpoint whose cut made the frozen layers
	cancel context.CancelFunc
	done   chan struct{}
	files  []FileDigest
	err    error
}

// wait returns the disks' digests once they are stored (nil c: no disks).
func (c *diskCut) wait(ctx context.Context) ([]FileDigest, error) {
	if c == nil {
		return nil, nil
	}
	select {
	case <-c.done:
		return c.files, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// abandon stops the copies of a checkpoint that failed otherwise.
func (c *diskCut) abandon() {
	if c != nil {
		c.cancel()
		<-c.done
	}
}

// cutDisks cuts the disks of the stopped VM for the checkpoint into dir
// and starts their copy (nil: the VM has no disks).
func (vm *VM) cutDisks(ctx context.Context, mon *qmp.Client, dir string) (*diskCut, error) {
	in := vm.diskList()
	if len(in) == 0 {
		return nil, nil
	}
	start := timeNow()
	vm.disks.jobs.Lock()
	frozen, err := disk.Cut(ctx, mon, in, vm.takeReady())
	vm.disks.jobs.Unlock()
	roots, formats, since := vm.recordCut(frozen, dir)
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", vm.name, err)
	}
	vm.log.Info("disks cut", "disks", len(frozen), "took", timeNow().Sub(start))
	cctx, cancel := context.WithCancel(context.Background())
	c := &diskCut{dir: dir, frozen: frozen, roots: roots, format: formats, since: since, cancel: cancel, done: make(chan struct{})}
	vm.disks.flat.RLock()
	go vm.storeAndFlatten(cctx, c)
	return c, nil
}

// recordCut points the spec at the new overlays and notes that their
// layers start at checkpoint dir; it returns the roots, their formats and
// the checkpoint the frozen layers started at.
func (vm *VM) recordCut(frozen []disk.Frozen, dir string) (roots, formats map[string]string, since string) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.rt.Chain == nil {
		vm.rt.Chain = &chainState{}
	}
	ch := vm.rt.Chain
	if ch.Roots == nil || ch.Formats == nil {
		ch.Roots, ch.Formats = map[string]string{}, map[string]string{}
	}
	since, roots, formats = ch.Since, map[string]string{}, map[string]string{}
	for _, f := range frozen {
		if ch.Roots[f.ID] == "" {
			ch.Roots[f.ID], ch.Formats[f.ID] = f.Path, f.Format
		}
		roots[f.ID], formats[f.ID] = ch.Roots[f.ID], "qcow2"
		if ch.Formats[f.ID] == "raw" {
			formats[f.ID] = "raw"
		}
		for i := range vm.spec.Disks {
			if vm.spec.Disks[i].ID == f.ID {
				vm.spec.Disks[i].Path, vm.spec.Disks[i].Format = f.Overlay, "qcow2"
			}
		}
	}
	ch.Since = dir
	if err := writeJSON(filepath.Join(vm.dir, fileSpec), vm.spec); err != nil {
		vm.log.Error("persist the spec's disk overlays", "err", err)
	}
	vm.saveRuntime()
	return roots, formats, since
}

// storeAndFlatten copies the frozen images into the checkpoint (one
// checkpoint's at a time: the next one's delta is over this one), then
// commits them into their roots.
func (vm *VM) storeAndFlatten(ctx context.Context, c *diskCut) {
	defer vm.disks.flat.RUnlock()
	vm.disks.work.Lock()
	start := timeNow()
	c.files, c.err = vm.storeDisks(ctx, c)
	vm.disks.work.Unlock()
	c.cancel()
	close(c.done)
	if c.err != nil {
		vm.log.Error("checkpoint disks not stored", "dir", c.dir, "err", c.err)
	} else {
		var bytes int64
		deltas := 0
		for _, f := range c.files {
			bytes += f.Size
			if f.Parent != nil {
				deltas++
			}
		}
		vm.log.Info("checkpoint disks stored", "dir", c.dir, "bytes", bytes, "deltas", deltas, "took", timeNow().Sub(start))
	}
	for _, f := range c.frozen {
		if err := vm.flatten(f.ID, c.roots[f.ID], f.Path); err != nil {
			vm.log.Warn("disk chain not flattened (the next checkpoint's flatten takes its layer too)", "disk", f.ID, "err", err)
		}
	}
}

func (vm *VM) storeDisks(ctx context.Context, c *diskCut) ([]FileDigest, error) {
	var files []FileDigest
	for _, f := range c.frozen {
		format := c.format[f.ID]
		var link *manifest.Link
		parent := ""
		if format == "qcow2" {
			link = vm.parentLink(c, f)
		}
		if link != nil {
			parent = filepath.Join(link.Dir, link.Name)
		}
		fd, err := disk.Store(ctx, f, filepath.Join(c.dir, "disk-"+f.ID+"."+format), parent, format)
		if err != nil {
			return nil, fmt.Errorf("vm %q: store disk %q: %w", vm.name, f.ID, err)
		}
		fd.Parent = link
		files = append(files, fd)
	}
	return files, nil
}

// parentLink is the previous checkpoint's disk that f's frozen layer is a
// delta over, if that checkpoint is complete; nil: store it whole.
func (vm *VM) parentLink(c *diskCut, f disk.Frozen) *manifest.Link {
	if c.since == "" || filepath.Clean(c.roots[f.ID]) == filepath.Clean(f.Path) {
		return nil
	}
	m, err := manifest.Read(c.since)
	if err != nil {
		return nil
	}
	pf, ok := m.File("disk", f.ID)
	rel, err := filepath.Rel(c.dir, c.since)
	if !ok || err != nil {
		return nil
	}
	return &manifest.Link{Dir: rel, Name: pf.Name, Size: pf.Size, SHA256: pf.SHA256}
}

// flatten commits a frozen layer (and any left under it) into the root,
// once the VM runs: QEMU must not write to a node a migration
// inactivated (a stop-and-save leaves the VM so until it resumes).
func (vm *VM) flatten(id, root, frozen string) error {
	ctx, cancel := context.WithTimeout(context.Background(), flattenTimeout)
	defer cancel()
	mon, err := vm.monitor()
	if err != nil {
		return err
	}
	for {
		st, err := mon.Status(ctx)
		if err != nil {
			return err
		}
		if st.Running {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	vm.disks.jobs.Lock()
	defer vm.disks.jobs.Unlock()
	start := timeNow()
	if err := disk.Flatten(ctx, mon, id, root, frozen); err != nil {
		return err
	}
	vm.log.Info("disk chain flattened", "disk", id, "into", root, "took", timeNow().Sub(start))
	return nil
}

// addDisks puts the stored disks into the checkpoint's manifest: the
// spec's disks are the checkpoint's files.
func addDisks(m *Manifest, files []FileDigest) {
	for _, fd := range files {
		m.Files = append(m.Files, fd)
		for i := range m.Spec.Disks {
			if m.Spec.Disks[i].ID == fd.ID {
				m.Spec.Disks[i].Path, m.Spec.Disks[i].Format = fd.Name, strings.TrimPrefix(filepath.Ext(fd.Name), ".")
			}
		}
	}
}

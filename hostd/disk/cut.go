package disk

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// ErrNoDevice: QEMU has no block device for a disk of the spec.
var ErrNoDevice = errors.New("no block device for the disk")

// Disk is one of a VM's disks as QEMU runs it now.
type Disk struct {
	ID     string
	Path   string // the active image (the spec's path)
	Format string
}

// Frozen is a disk cut: Path is frozen at the cut (QEMU only reads it
// from now on), Overlay is where the VM writes.
type Frozen struct {
	ID, Path, Format string
	Overlay          string
}

// Prepare makes the overlays a cut of disks will switch to, while the VM
// runs: the cut then only switches (no qemu-img while it stands still).
// What it made before an error is returned too (Discard removes them).
func Prepare(ctx context.Context, mon *qmp.Client, disks []Disk) ([]Frozen, error) {
	blocks, err := mon.QueryBlock(ctx)
	if err != nil {
		return nil, err
	}
	var ready []Frozen
	for _, d := range disks {
		f, err := createOverlay(ctx, blocks, d)
		if err != nil {
			return ready, fmt.Errorf("disk %q: prepare its overlay: %w", d.ID, err)
		}
		ready = append(ready, f)
	}
	return ready, nil
}

// Discard removes prepared overlays no cut took.
func Discard(ready []Frozen) {
	for _, f := range ready {
		removeQuiet(f.Overlay)
	}
}

// Cut switches every disk to a new qcow2 overlay next to its image, in
// O(1): it neither reads nor copies the disk. The VM must stand still
// (all disks cut at one instant, the instant of its RAM's cut). An overlay
// of ready made for the disk as it is now is taken, else one is made. It
// returns the disks cut before any error (those run on their overlay) and
// removes what it did not take of ready.
func Cut(ctx context.Context, mon *qmp.Client, disks []Disk, ready []Frozen) ([]Frozen, error) {
	ready = slices.Clone(ready)
	blocks, err := mon.QueryBlock(ctx)
	if err != nil {
		Discard(ready)
		return nil, err
	}
	var done []Frozen
	for _, d := range disks {
		f, ok := Frozen{}, false
		if i := slices.IndexFunc(ready, func(f Frozen) bool { return f.ID == d.ID && f.Path == d.Path }); i >= 0 {
			f, ok = ready[i], true
			ready = slices.Delete(ready, i, i+1)
		}
		if !ok {
			f, err = createOverlay(ctx, blocks, d)
		}
		if err == nil {
			err = switchTo(ctx, mon, blocks, f)
		}
		if err != nil {
			Discard(ready)
			return done, fmt.Errorf("disk %q: cut: %w", d.ID, err)
		}
		done = append(done, f)
	}
	Discard(ready)
	return done, nil
}

// createOverlay makes the file of d's next overlay.
func createOverlay(ctx context.Context, blocks []qmp.BlockInfo, d Disk) (Frozen, error) {
	b, ok := deviceOf(blocks, d.ID)
	if !ok {
		return Frozen{}, fmt.Errorf("%w (qdev dev-%s)", ErrNoDevice, d.ID)
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	f := Frozen{ID: d.ID, Path: d.Path, Format: d.Format, Overlay: overlayName(d.Path, d.ID, stamp)}
	size := strconv.FormatInt(b.Inserted.Image.VirtualSize, 10)
	// -u: the backing file is QEMU's (write-locked); the size is given.
	return f, run(ctx, "create", "-q", "-f", "qcow2", "-u", "-b", d.Path, "-F", d.Format, f.Overlay, size)
}

// switchTo opens f's overlay and makes it the disk's active layer.
func switchTo(ctx context.Context, mon *qmp.Client, blocks []qmp.BlockInfo, f Frozen) error {
	b, ok := deviceOf(blocks, f.ID)
	if !ok {
		removeQuiet(f.Overlay)
		return fmt.Errorf("%w (qdev dev-%s)", ErrNoDevice, f.ID)
	}
	node := "o" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := mon.BlockdevAddQcow2(ctx, node, f.Overlay); err != nil {
		removeQuiet(f.Overlay)
		return err
	}
	if err := mon.BlockdevSnapshot(ctx, b.Inserted.NodeName, node); err != nil {
		cleanupQMP(func(ctx context.Context) error { return mon.BlockdevDel(ctx, node) })
		removeQuiet(f.Overlay)
		return err
	}
	return nil
}

// deviceOf finds the backend of the disk's virtio-blk device (qemu/args.go
// names it dev-ID).
func deviceOf(blocks []qmp.BlockInfo, id string) (qmp.BlockInfo, bool) {
	for _, b := range blocks {
		if b.Inserted != nil && (b.QDev == "dev-"+id || strings.Contains(b.QDev, "/dev-"+id+"/")) {
			return b, true
		}
	}
	return qmp.BlockInfo{}, false
}

// overlayName: next to the image, named after the disk's root and the cut.
func overlayName(path, id, stamp string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".symvirt-"); i > 0 {
		base = base[:i] // an overlay of an overlay: named after the root
	} else {
		base = strings.TrimSuffix(base, filepath.Ext(base))
	}
	return filepath.Join(filepath.Dir(path), base+".symvirt-"+id+"-"+stamp+".qcow2")
}

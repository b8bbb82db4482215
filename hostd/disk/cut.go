package disk

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
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

// Cut switches every disk to a new qcow2 overlay next to its image, in
// O(1): it neither reads nor copies the disk. The VM must stand still
// (all disks cut at one instant, the instant of its RAM's cut). It
// returns the disks cut before any error: those run on their overlay.
func Cut(ctx context.Context, mon *qmp.Client, disks []Disk) ([]Frozen, error) {
	blocks, err := mon.QueryBlock(ctx)
	if err != nil {
		return nil, err
	}
	var done []Frozen
	for _, d := range disks {
		f, err := cutOne(ctx, mon, blocks, d)
		if err != nil {
			return done, fmt.Errorf("disk %q: cut: %w", d.ID, err)
		}
		done = append(done, f)
	}
	return done, nil
}

func cutOne(ctx context.Context, mon *qmp.Client, blocks []qmp.BlockInfo, d Disk) (Frozen, error) {
	b, ok := deviceOf(blocks, d.ID)
	if !ok {
		return Frozen{}, fmt.Errorf("%w (qdev dev-%s)", ErrNoDevice, d.ID)
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 36)
	f := Frozen{ID: d.ID, Path: d.Path, Format: d.Format, Overlay: overlayName(d.Path, d.ID, stamp)}
	size := strconv.FormatInt(b.Inserted.Image.VirtualSize, 10)
	// -u: the backing file is QEMU's (write-locked); the size is given.
	if err := run(ctx, "create", "-q", "-f", "qcow2", "-u", "-b", d.Path, "-F", d.Format, f.Overlay, size); err != nil {
		return f, err
	}
	node := "o" + stamp
	if err := mon.BlockdevAddQcow2(ctx, node, f.Overlay); err != nil {
		removeQuiet(f.Overlay)
		return f, err
	}
	if err := mon.BlockdevSnapshot(ctx, b.Inserted.NodeName, node); err != nil {
		cleanupQMP(func(ctx context.Context) error { return mon.BlockdevDel(ctx, node) })
		removeQuiet(f.Overlay)
		return f, err
	}
	return f, nil
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

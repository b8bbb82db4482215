package hostd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/symvirt/symvirt/hostd/disk"
	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/internal/atomicfile"
)

// A checkpoint's disk may be a delta over an earlier checkpoint's disk
// (manifest.Link, the qcow2's relative backing file). The chain is
// verified link by link on restore (each link's manifest signed, each
// file's digest the one its child names) and assembled into one new disk;
// removing a checkpoint merges its disks into the checkpoints that are
// deltas over it first. A parent finds its children through its
// children.json, a hint each child adds when it completes (each entry is
// checked against the child's signed manifest before it is used).

const (
	childrenName = "children.json"
	// maxChainLinks bounds a chain a restore follows.
	maxChainLinks = 256
)

// writeCheckpointManifest signs and writes the manifest, then tells the
// parents of its disks that it is their child.
func (h *Host) writeCheckpointManifest(dir string, m Manifest) error {
	if err := h.writeManifest(dir, m); err != nil {
		return err
	}
	for _, f := range m.Files {
		if f.Parent != nil {
			pdir := filepath.Join(dir, f.Parent.Dir)
			if err := addChild(pdir, dir); err != nil {
				h.log.Warn("checkpoint chain: the parent does not know its child (removing it will not merge)", "parent", pdir, "err", err)
			}
		}
	}
	return nil
}

func readChildren(dir string) []string {
	var rels []string
	if data, err := manifest.ReadInDir(dir, childrenName); err == nil {
		_ = json.Unmarshal(data, &rels)
	}
	return rels
}

func addChild(parent, child string) error {
	rel, err := filepath.Rel(parent, child)
	if err != nil {
		return err
	}
	rels := readChildren(parent)
	if slices.Contains(rels, rel) {
		return nil
	}
	data, err := json.Marshal(append(rels, rel))
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(parent, childrenName), data, 0o600)
}

// restoreDisks assembles each disk of the checkpoint in dir into a new
// standalone qcow2 in the host's disk directory (where the VM's disk
// lives on after the restore, through moves and the VM's removal), and
// points spec at them. It returns the files made.
func (h *Host) restoreDisks(ctx context.Context, dir string, m Manifest, spec *Spec) ([]string, error) {
	var made []string
	for i, d := range spec.Disks {
		f, _ := m.File("disk", d.ID) // manifest.Check: it is there
		dst, err := h.restoredDiskPath(spec.Name, d.ID, d.Format)
		switch {
		case err != nil:
		case f.Parent == nil && d.Format == "raw":
			err = manifest.CopyVerified(dir, f, dst)
		default:
			d.Format = "qcow2"
			err = h.assembleDisk(ctx, dir, f, dst)
		}
		if err != nil {
			for _, p := range made {
				os.Remove(p)
			}
			return nil, fmt.Errorf("checkpoint %s: disk %q: %w", dir, d.ID, err)
		}
		made = append(made, dst)
		spec.Disks[i].Path, spec.Disks[i].Format = dst, d.Format
	}
	return made, nil
}

// wholeDisks is spec with only the disks that are no delta: the policy
// checks those files as they are; a delta's chain is checked link by link
// as it is assembled, and the disk made of it as QEMU opens it.
func wholeDisks(spec Spec, m Manifest) Spec {
	spec.Disks = slices.DeleteFunc(slices.Clone(spec.Disks), func(d Disk) bool {
		f, _ := m.File("disk", d.ID)
		return f.Parent != nil
	})
	return spec
}

// restoredDiskPath is a new file name in the host's disk store:
// STATE_DIR/disks when the policy allows disks there (its default), else
// the last of the policy's disk directories.
func (h *Host) restoredDiskPath(vm, id, format string) (string, error) {
	dirs := h.cfg.Policy.DiskDirs
	if len(dirs) == 0 {
		return "", fmt.Errorf("no disk directory to restore into: %w", ErrInvalidSpec)
	}
	store := dirs[len(dirs)-1]
	own := filepath.Join(h.cfg.StateDir, "disks")
	for _, d := range dirs {
		if rel, err := filepath.Rel(d, own); err == nil && filepath.IsLocal(rel) {
			store = own
		}
	}
	if err := mkdirAll(store, 0o700); err != nil {
		return "", err
	}
	for n := 1; ; n++ {
		name := vm + "-" + id + "." + format
		if n > 1 {
			name = vm + "-" + id + "-" + strconv.Itoa(n) + "." + format
		}
		p := filepath.Join(store, name)
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			return p, nil
		}
	}
}

// assembleDisk copies the chain of checkpoint disk f of dir, verifying
// every link, into a private directory, and converts it into dst.
func (h *Host) assembleDisk(ctx context.Context, dir string, f FileDigest, dst string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var files []string
	for cur := dir; ; {
		if len(files) == maxChainLinks {
			return fmt.Errorf("disk chain longer than %d links: %w", maxChainLinks, ErrChecksum)
		}
		local := filepath.Join(tmp, strconv.Itoa(len(files))+".qcow2")
		if err := manifest.CopyVerified(cur, f, local); err != nil {
			return err
		}
		files = append(files, local)
		if f.Parent == nil {
			break
		}
		pdir := filepath.Join(cur, f.Parent.Dir)
		pm, err := h.verifiedManifest(pdir)
		if err != nil {
			return fmt.Errorf("disk chain: %w", err)
		}
		pf, ok := pm.File("disk", f.ID)
		if !ok || pf.Name != f.Parent.Name || pf.Size != f.Parent.Size || pf.SHA256 != f.Parent.SHA256 {
			return fmt.Errorf("disk chain: %s names %s in %s (%d bytes, sha256 %s), which its manifest does not list as that: %w",
				filepath.Join(cur, f.Name), f.Parent.Name, pdir, f.Parent.Size, f.Parent.SHA256, ErrChecksum)
		}
		cur, f = pdir, pf
	}
	// The private copies name each other: only what was verified is read
	// (the last keeps its backing file, which CheckRestore allowed).
	for i := 0; i+1 < len(files); i++ {
		if err := disk.Rebase(ctx, files[i], filepath.Base(files[i+1]), true); err != nil {
			return err
		}
	}
	return disk.Convert(ctx, files[0], dst)
}

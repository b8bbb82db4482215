package hostd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/hostd/disk"
	"github.com/symvirt/symvirt/hostd/manifest"
)

// removeCheckpoint deletes a checkpoint directory. A complete checkpoint
// whose disks later checkpoints are deltas over is first merged into each
// of them (their disks take what they read from it, their manifests are
// signed again), so every remaining checkpoint still restores.
func (h *Host) removeCheckpoint(ctx context.Context, dir string) error {
	if m, err := h.verifiedManifest(dir); err == nil {
		for _, rel := range readChildren(dir) {
			if err := h.mergeInto(ctx, dir, m, filepath.Join(dir, rel)); err != nil {
				return fmt.Errorf("checkpoint %s: merge into %s: %w", dir, rel, err)
			}
		}
	}
	return os.RemoveAll(dir)
}

// mergeInto merges the disks of checkpoint dir (manifest m) into those of
// its child checkpoint cdir that are deltas over them.
func (h *Host) mergeInto(ctx context.Context, dir string, m Manifest, cdir string) error {
	cm, err := h.verifiedManifest(cdir)
	if err != nil {
		h.log.Info("checkpoint chain: a child is gone", "child", cdir, "err", err)
		return nil
	}
	changed := false
	for i, cf := range cm.Files {
		pf, ok := m.File("disk", cf.ID)
		if cf.Role != "disk" || cf.Parent == nil || !ok || filepath.Clean(filepath.Join(cdir, cf.Parent.Dir)) != filepath.Clean(dir) ||
			cf.Parent.SHA256 != pf.SHA256 {
			continue
		}
		if cm.Files[i], err = mergeDisk(ctx, dir, pf, cdir, cf); err != nil {
			return err
		}
		changed = true
	}
	if !changed {
		return nil
	}
	if err := h.writeCheckpointManifest(cdir, cm); err != nil {
		return err
	}
	h.log.Info("checkpoint merged into its successor", "removed", dir, "into", cdir)
	return h.relinkChildren(cdir, cm)
}

// mergeDisk makes the child's disk cf a delta over the parent's parent (or
// whole) and returns its new digest.
func mergeDisk(ctx context.Context, dir string, pf FileDigest, cdir string, cf FileDigest) (FileDigest, error) {
	var link *manifest.Link
	backing := ""
	if pf.Parent != nil {
		rel, err := filepath.Rel(cdir, filepath.Join(dir, pf.Parent.Dir))
		if err != nil {
			return cf, err
		}
		l := *pf.Parent
		l.Dir = rel
		link, backing = &l, filepath.Join(rel, l.Name)
	}
	img := filepath.Join(cdir, cf.Name)
	if err := disk.Merge(ctx, img, backing); err != nil {
		return cf, err
	}
	nf, err := manifest.HashFile(img)
	nf.Role, nf.ID, nf.Parent = "disk", cf.ID, link
	return nf, err
}

// relinkChildren points the links of cdir's own children at its disks'
// new digests.
func (h *Host) relinkChildren(cdir string, cm Manifest) error {
	for _, rel := range readChildren(cdir) {
		gdir := filepath.Join(cdir, rel)
		gm, err := h.verifiedManifest(gdir)
		if err != nil {
			continue
		}
		changed := false
		for i, gf := range gm.Files {
			cf, ok := cm.File("disk", gf.ID)
			if gf.Role != "disk" || gf.Parent == nil || !ok || filepath.Clean(filepath.Join(gdir, gf.Parent.Dir)) != filepath.Clean(cdir) {
				continue
			}
			gm.Files[i].Parent.Size, gm.Files[i].Parent.SHA256 = cf.Size, cf.SHA256
			changed = true
		}
		if changed {
			if err := h.writeManifest(gdir, gm); err != nil {
				return err
			}
		}
	}
	return nil
}

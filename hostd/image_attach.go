package hostd

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/symvirt/symvirt/hostd/imagecache"
	"github.com/symvirt/symvirt/internal/names"
)

// AttachImage opens image name on this host, fetching chunks from
// req.Sources in order. The manifest comes from the first source that
// has one whose sha256 is req.ID: no source is trusted for more. An image
// already attached with the same id only takes the new sources (a new
// tree); with another id it is refused (delete it first).
func (h *Host) AttachImage(ctx context.Context, name string, req AttachImageRequest) (ImageInfo, error) {
	if err := names.Check("image", name); err != nil {
		return ImageInfo{}, fmt.Errorf("attach image: %w: %v", ErrInvalidSpec, err)
	}
	if len(req.Sources) == 0 || len(req.Sources) > 64 {
		return ImageInfo{}, fmt.Errorf("attach image %q: %d sources (1..64): %w", name, len(req.Sources), ErrInvalidSpec)
	}
	if c, err := h.imageCache(name); err == nil {
		if st := c.Stats(); st.ID != req.ID {
			return ImageInfo{}, fmt.Errorf("image %q is here with id %s, not %s: %w", name, st.ID, req.ID, ErrExists)
		}
		if !c.Stats().Seed {
			c.Sources().Set(h.imageSources(name, req.Sources))
			if err := saveImageState(filepath.Join(h.imagesDir(), name), imageState{ID: req.ID, Sources: req.Sources}); err != nil {
				return ImageInfo{}, err
			}
		}
		return h.Image(name)
	}
	srcs := imagecache.NewSources(h.imageSources(name, req.Sources), h.log.With("image", name))
	m, data, err := srcs.FetchManifest(ctx, req.ID)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("attach image %q: %w", name, err)
	}
	if m.Name != name {
		return ImageInfo{}, fmt.Errorf("attach image %q: the manifest is image %q's: %w", name, m.Name, ErrInvalidSpec)
	}
	dir, err := h.imageDir(name, data)
	if err != nil {
		return ImageInfo{}, err
	}
	if err := saveImageState(dir, imageState{ID: req.ID, Sources: req.Sources}); err != nil {
		return ImageInfo{}, err
	}
	c, err := imagecache.Open(dir, m, req.ID, srcs, h.log.With("image", name))
	if err != nil {
		return ImageInfo{}, err
	}
	return h.addImage(name, dir, c)
}

// PrefetchImage fetches every chunk of an attached image: a whole copy
// (what a boot without fan-out waits for).
func (h *Host) PrefetchImage(ctx context.Context, name string) (ImageInfo, error) {
	c, err := h.imageCache(name)
	if err != nil {
		return ImageInfo{}, err
	}
	m := c.Manifest()
	for i := range m.Chunks() {
		off, n := m.Span(i)
		if err := c.ReadAt(ctx, make([]byte, n), off); err != nil {
			return ImageInfo{}, fmt.Errorf("prefetch image %q: %w", name, err)
		}
	}
	return h.Image(name)
}

// imageSources are the peers at addrs, this host's own address left out.
func (h *Host) imageSources(name string, addrs []string) []imagecache.Source {
	var out []imagecache.Source
	self, _ := filepath.Abs(h.layout().Socket())
	for _, a := range slices.Compact(slices.Clone(addrs)) {
		if abs, err := filepath.Abs(a); err == nil && abs == self {
			continue
		}
		out = append(out, &peerImage{h: h, addr: a, image: name})
	}
	return out
}

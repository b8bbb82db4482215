package hostd

import (
	"context"
	"errors"
	"fmt"

	"github.com/symvirt/symvirt/hostd/imagecache"
)

// A fetched template's RAM is kept once: the RAM image's cache writes
// each chunk, once checked against the image's manifest, into the
// template's new RAM file in hostd's RAM directory, and serves this
// host's children from that file. The file is complete before the
// template is recorded (so before any clone maps it), and a complete
// cache never writes again; clones map it private copy-on-write, so
// their writes never reach it. A second copy under the state directory
// (as an image cache keeps) would be as large as the template's data.

// attachTemplateRAM opens the template's RAM image from req.Sources as
// a cache filling the new file ramPath. Its image.json is written only
// once the file is complete (servesTemplateRAM): a hostd restarted
// mid-fetch does not reopen a cache whose bitmap describes a file it
// never finished.
func (h *Host) attachTemplateRAM(ctx context.Context, m TemplateManifest, req FetchTemplateRequest, ramPath string) (*imagecache.Cache, error) {
	ramImg, _ := TemplateImages(m.Name)
	// Left by a fetch that failed: it held chunks of a RAM file now gone.
	if err := h.DeleteImage(ramImg); err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	log := h.log.With("image", ramImg)
	srcs := imagecache.NewSources(h.imageSources(ramImg, req.Sources), log)
	im, data, err := srcs.FetchManifest(ctx, m.RAMImage)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ramImg, err)
	}
	if im.Name != ramImg {
		return nil, fmt.Errorf("the manifest is image %q's, not %q: %w", im.Name, ramImg, ErrInvalidSpec)
	}
	dir, err := h.imageDir(ramImg, data)
	if err != nil {
		return nil, err
	}
	f, err := newRAMFile(ramPath)
	if err != nil {
		return nil, err
	}
	c, err := imagecache.OpenInto(dir, f, im, m.RAMImage, srcs, log)
	if err != nil {
		f.Close()
		return nil, err
	}
	if _, err := h.addImage(ramImg, dir, c); err != nil {
		return nil, err
	}
	return c, nil
}

// servesTemplateRAM records the complete RAM file as the RAM image's
// seed: a restarted hostd serves it in place, as the template's own host
// serves its RAM file.
func (h *Host) servesTemplateRAM(m TemplateManifest, ramPath string) error {
	ramImg, _ := TemplateImages(m.Name)
	h.images.mu.Lock()
	img := h.images.m[ramImg]
	h.images.mu.Unlock()
	if img == nil {
		return fmt.Errorf("image %q: %w", ramImg, ErrNotFound)
	}
	return saveImageState(img.dir, imageState{ID: m.RAMImage, Seed: ramPath})
}

package hostd

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/symvirt/symvirt/hostd/imagecache"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"github.com/symvirt/symvirt/internal/names"
)

// Base images for fan-out boots: a seed registers an image file and
// serves its chunks to peers; every other host attaches it, caching the
// chunks its VMs (or its children in the coordinator's tree) read. Local
// QEMUs read an image through its NBD export, a unix socket in the
// image's 0700 directory under the state dir.

// RegisterImageRequest registers an image file on its seed host.
type RegisterImageRequest struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Chunk is the fetch unit in bytes (default 256 KiB).
	Chunk int `json:"chunk,omitempty"`
}

// AttachImageRequest opens an image on a host from its sources: the
// addresses of the hostds to fetch from, nearest ancestor first. ID is the
// sha256 of the image's manifest, as registered on the seed.
type AttachImageRequest struct {
	ID      string   `json:"id"`
	Sources []string `json:"sources"`
}

// ImageInfo is one image on this host.
type ImageInfo struct {
	Name    string   `json:"name"`
	Sources []string `json:"sources,omitempty"`
	imagecache.Stats
}

type imageSet struct {
	mu sync.Mutex
	m  map[string]*hostImage
}

type hostImage struct {
	name  string
	dir   string
	cache *imagecache.Cache
	nbd   net.Listener
}

func (h *Host) imagesDir() string { return filepath.Join(h.cfg.StateDir, "images") }

func (i *hostImage) socket() string { return filepath.Join(i.dir, "nbd.sock") }

func (i *hostImage) info() ImageInfo {
	return ImageInfo{Name: i.name, Sources: i.cache.Sources().Names(), Stats: i.cache.Stats()}
}

func (i *hostImage) close() {
	i.nbd.Close()
	i.cache.Close()
}

// Image is one image's info.
func (h *Host) Image(name string) (ImageInfo, error) {
	h.images.mu.Lock()
	defer h.images.mu.Unlock()
	img := h.images.m[name]
	if img == nil {
		return ImageInfo{}, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	return img.info(), nil
}

// Images lists this host's images.
func (h *Host) Images() []ImageInfo {
	h.images.mu.Lock()
	defer h.images.mu.Unlock()
	out := []ImageInfo{}
	for _, img := range h.images.m {
		out = append(out, img.info())
	}
	slices.SortFunc(out, func(a, b ImageInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (h *Host) imageCache(name string) (*imagecache.Cache, error) {
	h.images.mu.Lock()
	defer h.images.mu.Unlock()
	img := h.images.m[name]
	if img == nil {
		return nil, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	return img.cache, nil
}

// RegisterImage makes this host an image's seed: it lists the chunks'
// digests (the manifest whose sha256 is the image's id) and serves the
// file itself, which must not change while registered.
func (h *Host) RegisterImage(ctx context.Context, req RegisterImageRequest) (ImageInfo, error) {
	if err := names.Check("image", req.Name); err != nil {
		return ImageInfo{}, fmt.Errorf("register image: %w: %v", ErrInvalidSpec, err)
	}
	if err := h.cfg.Policy.CheckImageFile(req.Path); err != nil {
		return ImageInfo{}, err
	}
	if req.Chunk == 0 {
		req.Chunk = imagecache.ChunkDefault
	}
	if _, err := h.Image(req.Name); err == nil {
		return ImageInfo{}, fmt.Errorf("image %q: %w", req.Name, ErrExists)
	}
	m, err := imagecache.Build(req.Name, req.Path, req.Chunk)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("register image %q: %w: %v", req.Name, ErrInvalidSpec, err)
	}
	data, id := m.Encode()
	dir, err := h.imageDir(req.Name, data)
	if err != nil {
		return ImageInfo{}, err
	}
	c, err := imagecache.OpenSeed(req.Path, m, id, h.log.With("image", req.Name))
	if err == nil {
		err = saveImageState(dir, imageState{ID: id, Seed: req.Path})
	}
	if err != nil {
		return ImageInfo{}, err
	}
	return h.addImage(req.Name, dir, c)
}

// imageDir makes the image's private directory and keeps its manifest.
func (h *Host) imageDir(name string, manifest []byte) (string, error) {
	dir, err := names.Join(h.imagesDir(), name)
	if err != nil {
		return "", fmt.Errorf("image: %w: %v", ErrInvalidSpec, err)
	}
	if err := mkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, atomicfile.WriteFile(filepath.Join(dir, "manifest.json"), manifest, 0o600)
}

// addImage exports c over NBD and records it.
func (h *Host) addImage(name, dir string, c *imagecache.Cache) (ImageInfo, error) {
	img := &hostImage{name: name, dir: dir, cache: c}
	os.Remove(img.socket())
	l, err := net.Listen("unix", img.socket())
	if err != nil {
		c.Close()
		return ImageInfo{}, fmt.Errorf("image %q: nbd export: %w", name, err)
	}
	img.nbd = l
	go imagecache.ServeNBD(l, name, c, h.log.With("image", name))
	h.images.mu.Lock()
	defer h.images.mu.Unlock()
	if h.images.m == nil {
		h.images.m = map[string]*hostImage{}
		h.metrics.reg.MustRegister(imageCollector{h})
	}
	if h.images.m[name] != nil {
		img.close()
		return ImageInfo{}, fmt.Errorf("image %q: %w", name, ErrExists)
	}
	h.images.m[name] = img
	h.log.Info("image ready", "image", name, "seed", c.Stats().Seed, "sources", c.Sources().Names())
	return img.info(), nil
}

// DeleteImage stops serving an image and removes its cache (a seed's
// file stays). VMs still reading it lose their backing disk: stop them
// first.
func (h *Host) DeleteImage(name string) error {
	h.images.mu.Lock()
	img := h.images.m[name]
	delete(h.images.m, name)
	h.images.mu.Unlock()
	if img == nil {
		return fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	img.close()
	return os.RemoveAll(img.dir)
}

package hostd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/symvirt/symvirt/hostd/imagecache"
	"github.com/symvirt/symvirt/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// FetchTemplateRequest asks a host for a template from its sources
// (nearest ancestor in the coordinator's fan-out tree first). ID is the
// sha256 of the template's manifest, as its host published it.
type FetchTemplateRequest struct {
	ID      string   `json:"id"`
	Sources []string `json:"sources"`
}

// fetchWorkers is how many chunks of a template's RAM are fetched at once.
const fetchWorkers = 4

// FetchTemplate makes template name a template of this host, its files
// fetched through the image fan-out from req.Sources: the manifest only
// if it hashes to req.ID, every chunk only if it matches the digest its
// image's manifest (named by id in the template's) lists. Nothing is
// recorded, so no clone can start, until every byte has been checked. A
// template already here with the same id only takes the new sources.
func (h *Host) FetchTemplate(ctx context.Context, name string, req FetchTemplateRequest) (Template, error) {
	dir, err := h.templateDir(name)
	if err != nil {
		return Template{}, err
	}
	if len(req.Sources) == 0 || len(req.Sources) > 64 {
		return Template{}, fmt.Errorf("fetch template %q: %d sources (1..64): %w", name, len(req.Sources), ErrInvalidSpec)
	}
	if t, err := h.Template(name); err == nil {
		if t.ID != req.ID {
			return Template{}, fmt.Errorf("template %q is here with id %q, not %s: %w", name, t.ID, req.ID, ErrExists)
		}
		_, _, err := h.attachTemplateImages(ctx, name, TemplateManifest{}, req, true)
		return t, err
	}
	m, data, err := h.fetchTemplateManifest(ctx, name, req)
	if err != nil {
		return Template{}, fmt.Errorf("fetch template %q: %w", name, err)
	}
	if err := h.makeTemplateDir(name, dir); err != nil {
		return Template{}, err
	}
	t, err := h.assembleTemplate(ctx, dir, m, data, req)
	if err != nil {
		os.RemoveAll(dir)
		os.Remove(h.templateRAMPath(name))
		return Template{}, fmt.Errorf("fetch template %q: %w", name, err)
	}
	h.log.Info("template fetched", "template", name, "id", req.ID, "sources", req.Sources)
	return t, nil
}

// fetchTemplateManifest gets the manifest that hashes to req.ID from the
// first source that has it, and checks it describes template name.
func (h *Host) fetchTemplateManifest(ctx context.Context, name string, req FetchTemplateRequest) (TemplateManifest, []byte, error) {
	var errs []error
	for _, addr := range h.peerAddrs(req.Sources) {
		data, err := h.peer(addr).api.GetBytes(ctx, "/v1/templates/"+name+"/manifest", templateManifestMax)
		var m TemplateManifest
		if err == nil {
			m, err = decodeTemplateManifest(data, req.ID)
		}
		if err == nil && (m.Name != name || m.Spec.Name != templateVMPrefix+name) {
			err = fmt.Errorf("the manifest is template %q's (VM %q): %w", m.Name, m.Spec.Name, ErrInvalidSpec)
		}
		if err == nil {
			_, err = templateSpec(name, m.Spec) // what create would accept
		}
		if err == nil {
			return m, data, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return TemplateManifest{}, nil, fmt.Errorf("manifest %s: %w: %w", req.ID, imagecache.ErrNoSource, errors.Join(errs...))
}

// peerAddrs are addrs without this host's own address.
func (h *Host) peerAddrs(addrs []string) []string {
	var out []string
	for _, s := range h.imageSources("", addrs) {
		out = append(out, s.Name())
	}
	return out
}

// attachTemplateImages opens the template's two images from the
// sources (only new sources when existing).
func (h *Host) attachTemplateImages(ctx context.Context, name string, m TemplateManifest, req FetchTemplateRequest, existing bool) (ram, state *imagecache.Cache, err error) {
	ramImg, stateImg := TemplateImages(name)
	for _, a := range []struct {
		img string
		id  string
		c   **imagecache.Cache
	}{{ramImg, m.RAMImage, &ram}, {stateImg, m.StateImage, &state}} {
		id := a.id
		if existing {
			c, err := h.imageCache(a.img)
			if err != nil {
				continue // a template fetched here and then published
			}
			id = c.Stats().ID
		}
		if _, err := h.AttachImage(ctx, a.img, AttachImageRequest{ID: id, Sources: req.Sources}); err != nil {
			return nil, nil, err
		}
		if *a.c, err = h.imageCache(a.img); err != nil {
			return nil, nil, err
		}
	}
	return ram, state, nil
}

// assembleTemplate fetches the template's files into dir and its RAM
// file, then records it.
func (h *Host) assembleTemplate(ctx context.Context, dir string, m TemplateManifest, raw []byte, req FetchTemplateRequest) (Template, error) {
	ram, state, err := h.attachTemplateImages(ctx, m.Name, m, req, false)
	if err != nil {
		return Template{}, err
	}
	if ram.Size() != m.RAMSize || state.Size() < m.State.Size {
		return Template{}, fmt.Errorf("images of %d and %d bytes for a RAM of %d and a state of %d: %w",
			ram.Size(), state.Size(), m.RAMSize, m.State.Size, ErrInvalidSpec)
	}
	buf := make([]byte, m.State.Size)
	if err := state.ReadAt(ctx, buf, 0); err != nil {
		return Template{}, fmt.Errorf("state: %w", err)
	}
	if got := imagecache.DigestOf(buf); got != m.State.SHA256 {
		return Template{}, fmt.Errorf("state: sha256 %s, the manifest says %s: %w", got, m.State.SHA256, imagecache.ErrDigest)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, templateState), buf, 0o600); err != nil {
		return Template{}, err
	}
	ramPath := h.templateRAMPath(m.Name)
	if err := copyImageTo(ctx, ram, ramPath); err != nil {
		return Template{}, fmt.Errorf("RAM: %w", err)
	}
	id, err := ramIdentity(ramPath)
	if err != nil {
		return Template{}, err
	}
	t := Template{Name: m.Name, Spec: m.Spec, State: m.State, RAM: id, RAMSHA256: m.RAMSHA256,
		CreatedAt: m.CreatedAt, Boot: m.Boot, ID: req.ID}
	// Published here too: this host's children in the tree ask it.
	if err := atomicfile.WriteFile(filepath.Join(dir, templatePublished), raw, 0o600); err != nil {
		return Template{}, err
	}
	if err := writeJSON(filepath.Join(dir, templateRecord), t); err != nil {
		return Template{}, err
	}
	return t, atomicfile.SyncDir(dir)
}

// copyImageTo writes the image's bytes to a new file at path (0600, no
// symlink followed), its zero chunks left as holes, fetchWorkers chunks
// at a time.
func copyImageTo(ctx context.Context, c *imagecache.Cache, path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	m := c.Manifest()
	if err := f.Truncate(m.Size); err != nil {
		return err
	}
	next := make(chan int)
	errs := make([]error, fetchWorkers)
	var wg sync.WaitGroup
	for w := range fetchWorkers {
		wg.Go(func() {
			for i := range next {
				if errs[w] != nil || m.Zero(i) {
					continue
				}
				off, n := m.Span(i)
				buf := make([]byte, n)
				if errs[w] = c.ReadAt(ctx, buf, off); errs[w] == nil {
					_, errs[w] = f.WriteAt(buf, off)
				}
			}
		})
	}
	for i := range m.Chunks() {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

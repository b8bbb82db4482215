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
// sha256 of the template's manifest, as the coordinator recorded it.
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
// template already here (or being fetched) with the same id is the
// answer; with another id, the request is refused.
func (h *Host) FetchTemplate(ctx context.Context, name string, req FetchTemplateRequest) (Template, error) {
	if _, err := h.templateDir(name); err != nil {
		return Template{}, err
	}
	if len(req.Sources) == 0 || len(req.Sources) > 64 {
		return Template{}, fmt.Errorf("fetch template %q: %d sources (1..64): %w", name, len(req.Sources), ErrInvalidSpec)
	}
	tf, first, err := h.fetches.join(name, req.ID)
	if err != nil {
		return Template{}, err
	}
	if !first {
		h.log.Info("template fetch: waiting for the one under way", "template", name, "id", req.ID)
		return tf.wait(ctx)
	}
	t, err := h.fetchTemplate(ctx, name, req)
	h.fetches.finish(name, tf, t, err)
	return t, err
}

// fetchTemplate is FetchTemplate, alone for its name on this host.
func (h *Host) fetchTemplate(ctx context.Context, name string, req FetchTemplateRequest) (Template, error) {
	if t, err := h.Template(name); err == nil {
		if t.ID != req.ID {
			return Template{}, fmt.Errorf("template %q is here with id %q, not %s: %w", name, t.ID, req.ID, ErrExists)
		}
		return t, nil
	}
	m, data, err := h.fetchTemplateManifest(ctx, name, req)
	if err != nil {
		return Template{}, fmt.Errorf("fetch template %q: %w", name, err)
	}
	dir, _ := h.templateDir(name)
	if err := h.makeTemplateDir(name, dir); err != nil {
		return Template{}, err
	}
	t, err := h.assembleTemplate(ctx, dir, m, data, req)
	if err != nil {
		h.unpublishTemplate(name) // the RAM image's chunks were the RAM file's
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

// assembleTemplate fetches the template's files into dir and its RAM
// file, then records it.
func (h *Host) assembleTemplate(ctx context.Context, dir string, m TemplateManifest, raw []byte, req FetchTemplateRequest) (Template, error) {
	_, stateImg := TemplateImages(m.Name)
	if _, err := h.AttachImage(ctx, stateImg, AttachImageRequest{ID: m.StateImage, Sources: req.Sources}); err != nil {
		return Template{}, err
	}
	state, err := h.imageCache(stateImg)
	if err != nil {
		return Template{}, err
	}
	ramPath := h.templateRAMPath(m.Name)
	ram, err := h.attachTemplateRAM(ctx, m, req, ramPath)
	if err != nil {
		return Template{}, fmt.Errorf("RAM: %w", err)
	}
	if ram.Size() != m.RAMSize || state.Size() < m.State.Size {
		return Template{}, fmt.Errorf("images of %d and %d bytes for a RAM of %d and a state of %d: %w",
			ram.Size(), state.Size(), m.RAMSize, m.State.Size, ErrInvalidSpec)
	}
	if err := h.fetchTemplateState(ctx, dir, state, m); err != nil {
		return Template{}, err
	}
	if err := fillImage(ctx, ram); err != nil {
		return Template{}, fmt.Errorf("RAM: %w", err)
	}
	if err := h.servesTemplateRAM(m, ramPath); err != nil {
		return Template{}, err
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

// fetchTemplateState reads the device state from its image, checks it
// against the manifest's digest and keeps it in dir.
func (h *Host) fetchTemplateState(ctx context.Context, dir string, state *imagecache.Cache, m TemplateManifest) error {
	buf := make([]byte, m.State.Size)
	if err := state.ReadAt(ctx, buf, 0); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if got := imagecache.DigestOf(buf); got != m.State.SHA256 {
		return fmt.Errorf("state: sha256 %s, the manifest says %s: %w", got, m.State.SHA256, imagecache.ErrDigest)
	}
	return atomicfile.WriteFile(filepath.Join(dir, templateState), buf, 0o600)
}

// fillImage fetches every chunk of c that is missing, fetchWorkers at a
// time.
func fillImage(ctx context.Context, c *imagecache.Cache) error {
	m := c.Manifest()
	next := make(chan int)
	errs := make([]error, fetchWorkers)
	var wg sync.WaitGroup
	for w := range fetchWorkers {
		wg.Go(func() {
			buf := make([]byte, m.Chunk)
			for i := range next {
				if errs[w] == nil {
					_, n := m.Span(i)
					errs[w] = c.ReadAt(ctx, buf[:n], int64(i)*int64(m.Chunk))
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

// newRAMFile creates a template's RAM file: 0600, not through a symlink,
// and not over a file that is there.
func newRAMFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
}

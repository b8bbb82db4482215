package hostd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/hostd/imagecache"
	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/internal/atomicfile"
)

// A template reaches other hosts through the image fan-out: its host
// publishes the RAM file and the device state as two images (chunk
// manifests, served to peers like any image's) and lists them, with the
// template's spec and digests, in a template manifest whose sha256 is the
// template's id. The coordinator keeps that id; a host that fetches the
// template accepts only the manifest that hashes to it, and the images'
// chunks only as their manifests (named by id in it) list them.

// TemplateManifest is what a published template is: everything a host
// needs to start clones of it, and the ids of its two images.
type TemplateManifest struct {
	Name      string              `json:"name"`
	Spec      Spec                `json:"spec"`
	State     manifest.FileDigest `json:"state"`
	RAMSize   int64               `json:"ram_size"`
	RAMSHA256 string              `json:"ram_sha256"`
	CreatedAt time.Time           `json:"created_at"`
	Boot      time.Duration       `json:"boot_ns"`
	// RAMImage and StateImage are the ids of the images holding the RAM
	// file and the state (zero-padded to a multiple of 512 bytes).
	RAMImage   string `json:"ram_image"`
	StateImage string `json:"state_image"`
}

// TemplatePublication is a published template's id and manifest.
type TemplatePublication struct {
	Name     string           `json:"name"`
	ID       string           `json:"id"`
	Manifest TemplateManifest `json:"manifest"`
}

// templateManifestMax bounds a template manifest read from a peer.
const templateManifestMax = 1 << 20

// Files a published template adds to its directory.
const (
	templatePublished = "published.json"
	templateStateImg  = "state.img"
)

// TemplateImages are the names of the images a template is published as.
func TemplateImages(name string) (ram, state string) {
	return "tmpl." + name + ".ram", "tmpl." + name + ".state"
}

// encodeTemplateManifest is the manifest's canonical bytes and its id.
func encodeTemplateManifest(m TemplateManifest) ([]byte, string) {
	data, _ := json.Marshal(m)
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:])
}

// decodeTemplateManifest accepts the bytes only if their sha256 is id.
func decodeTemplateManifest(data []byte, id string) (TemplateManifest, error) {
	var m TemplateManifest
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != id {
		return m, fmt.Errorf("template manifest: sha256 is not the template's id %s: %w", id, imagecache.ErrDigest)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("template manifest: %w: %v", ErrInvalidSpec, err)
	}
	return m, nil
}

// PublishTemplate makes the template fetchable by peers: once per
// template (later calls return the same id while its images are here).
func (h *Host) PublishTemplate(ctx context.Context, name string) (TemplatePublication, error) {
	t, err := h.Template(name)
	if err != nil {
		return TemplatePublication{}, err
	}
	dir, _ := h.templateDir(name)
	if pub, err := h.published(name, dir); err == nil {
		return pub, nil
	}
	ramImg, stateImg := TemplateImages(name)
	if d := t.RAM.Replaced(); d != "" {
		return TemplatePublication{}, fmt.Errorf("template %q: %s: %w", name, d, ErrRAMFile)
	}
	st, err := os.Stat(t.RAM.Path)
	if err != nil {
		return TemplatePublication{}, fmt.Errorf("template %q: %v: %w", name, err, ErrRAMFile)
	}
	ramID, err := h.seedImage(ramImg, t.RAM.Path)
	if err != nil {
		return TemplatePublication{}, fmt.Errorf("publish template %q: RAM: %w", name, err)
	}
	padded := filepath.Join(dir, templateStateImg)
	if err := padStateImage(filepath.Join(dir, templateState), padded, t.State); err != nil {
		return TemplatePublication{}, fmt.Errorf("publish template %q: state: %w", name, err)
	}
	stateID, err := h.seedImage(stateImg, padded)
	if err != nil {
		return TemplatePublication{}, fmt.Errorf("publish template %q: state: %w", name, err)
	}
	m := TemplateManifest{Name: name, Spec: t.Spec, State: t.State, RAMSize: st.Size(), RAMSHA256: t.RAMSHA256,
		CreatedAt: t.CreatedAt, Boot: t.Boot, RAMImage: ramID, StateImage: stateID}
	data, id := encodeTemplateManifest(m)
	if err := atomicfile.WriteFile(filepath.Join(dir, templatePublished), data, 0o600); err != nil {
		return TemplatePublication{}, err
	}
	t.ID = id
	if err := writeJSON(filepath.Join(dir, templateRecord), t); err != nil {
		return TemplatePublication{}, err
	}
	h.log.Info("template published", "template", name, "id", id, "ram_image", ramID, "state_image", stateID)
	return TemplatePublication{Name: name, ID: id, Manifest: m}, nil
}

// published is the template's publication, if it was published and its
// images are still served here.
func (h *Host) published(name, dir string) (TemplatePublication, error) {
	data, err := os.ReadFile(filepath.Join(dir, templatePublished))
	if err != nil {
		return TemplatePublication{}, err
	}
	sum := sha256.Sum256(data)
	id := hex.EncodeToString(sum[:])
	m, err := decodeTemplateManifest(data, id)
	if err != nil {
		return TemplatePublication{}, err
	}
	ramImg, stateImg := TemplateImages(name)
	for img, want := range map[string]string{ramImg: m.RAMImage, stateImg: m.StateImage} {
		c, err := h.imageCache(img)
		if err != nil {
			return TemplatePublication{}, err
		}
		if c.Stats().ID != want {
			return TemplatePublication{}, fmt.Errorf("image %q is not the template's: %w", img, ErrExists)
		}
	}
	return TemplatePublication{Name: name, ID: id, Manifest: m}, nil
}

// seedImage registers a file of hostd's own as an image's seed (no
// policy check: hostd made the file) and returns the image's id.
func (h *Host) seedImage(name, path string) (string, error) {
	if c, err := h.imageCache(name); err == nil {
		// From an earlier publication whose record was lost: the same
		// file gives the same id; another is refused below.
		m, err := imagecache.Build(name, path, imagecache.ChunkDefault)
		if err != nil {
			return "", err
		}
		if _, id := m.Encode(); id == c.Stats().ID {
			return id, nil
		}
		return "", fmt.Errorf("image %q: %w", name, ErrExists)
	}
	m, err := imagecache.Build(name, path, imagecache.ChunkDefault)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	data, id := m.Encode()
	dir, err := h.imageDir(name, data)
	if err != nil {
		return "", err
	}
	c, err := imagecache.OpenSeed(path, m, id, h.log.With("image", name))
	if err == nil {
		err = saveImageState(dir, imageState{ID: id, Seed: path})
	}
	if err == nil {
		_, err = h.addImage(name, dir, c)
	}
	return id, err
}

// padStateImage copies the state (checked against its digest) to dst,
// zero-padded to a multiple of 512 bytes as an image must be.
func padStateImage(src, dst string, want manifest.FileDigest) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if got := imagecache.DigestOf(data); int64(len(data)) != want.Size || got != want.SHA256 {
		return fmt.Errorf("%s does not match the template's record: %w", src, imagecache.ErrDigest)
	}
	size := (len(data) + 511) &^ 511
	if size == 0 {
		size = 512
	}
	padded := make([]byte, size)
	copy(padded, data)
	return atomicfile.WriteFile(dst, padded, 0o600)
}

// unpublishTemplate removes the template's images from this host.
func (h *Host) unpublishTemplate(name string) {
	ramImg, stateImg := TemplateImages(name)
	for _, img := range []string{ramImg, stateImg} {
		if err := h.DeleteImage(img); err != nil && !errors.Is(err, ErrNotFound) {
			h.log.Warn("template image not removed", "image", img, "err", err)
		}
	}
}

// templateManifestBytes are what a peer fetching the template asks for.
func (h *Host) templateManifestBytes(name string) ([]byte, error) {
	dir, err := h.templateDir(name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, templatePublished))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("template %q is not published here: %w", name, ErrNotFound)
	}
	return data, err
}

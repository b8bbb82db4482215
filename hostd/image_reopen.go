package hostd

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/hostd/imagecache"
	"github.com/symvirt/symvirt/internal/atomicfile"
)

// imageState is what a restarted hostd needs to open an image again:
// the seed's file, or the sources of a cache (its chunks and bitmap stay
// in the image's directory, so nothing held is fetched again).
type imageState struct {
	ID      string   `json:"id"`
	Seed    string   `json:"seed,omitempty"`
	Sources []string `json:"sources,omitempty"`
}

func saveImageState(dir string, st imageState) error {
	data, _ := json.Marshal(st)
	return atomicfile.WriteFile(filepath.Join(dir, "image.json"), data, 0o600)
}

// reopenImages opens the images a previous hostd had, each checked
// against its manifest's id as when it was registered or attached.
func (h *Host) reopenImages() {
	entries, _ := os.ReadDir(h.imagesDir())
	for _, e := range entries {
		name, dir := e.Name(), filepath.Join(h.imagesDir(), e.Name())
		if err := h.reopenImage(name, dir); err != nil {
			h.log.Warn("image not reopened: attach or register it again", "image", name, "err", err)
		}
	}
}

func (h *Host) reopenImage(name, dir string) error {
	var st imageState
	if err := readJSON(filepath.Join(dir, "image.json"), &st); err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return err
	}
	m, err := imagecache.Decode(data, st.ID)
	if err != nil {
		return err
	}
	log := h.log.With("image", name)
	var c *imagecache.Cache
	if st.Seed != "" {
		c, err = imagecache.OpenSeed(st.Seed, m, st.ID, log)
	} else {
		c, err = imagecache.Open(dir, m, st.ID, imagecache.NewSources(h.imageSources(name, st.Sources), log), log)
	}
	if err != nil {
		return err
	}
	_, err = h.addImage(name, dir, c)
	return err
}

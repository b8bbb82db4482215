package hostd

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/names"
	"golang.org/x/sys/unix"
)

// A template is a booted VM kept for cloning: its guest RAM as a file in
// hostd's own RAM directory (0700, on /dev/shm), which clones map private
// copy-on-write, and its device state, saved with x-ignore-shared so that
// it holds no RAM. Both, and the record, stay on this host: 0700
// directories, 0600 files, no one else can write them; the record keeps
// the RAM file's identity (a file put at the path is refused) and the
// state's digest (checked as a clone loads it).
type Template struct {
	Name string `json:"name"`
	// Spec is the template VM's, with the MACs it booted with: a clone
	// finds its NICs by them.
	Spec      Spec                `json:"spec"`
	State     manifest.FileDigest `json:"state"`
	RAM       qemu.RAMFile        `json:"ram"`
	RAMSHA256 string              `json:"ram_sha256"`
	// ID is the template's manifest's sha256 once published or fetched
	// (TemplateManifest), the same on every host that holds it.
	ID        string    `json:"id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Boot is how long the template VM took from start to guestd ready.
	Boot time.Duration `json:"boot_ns"`
	// Pool is the template's pool of standby clones, if it has one (in
	// listings; not recorded).
	Pool *PoolInfo `json:"pool,omitempty"`
}

// Files of a template's directory.
const (
	templateRecord = "template.json"
	templateState  = "state"
	templateRAMExt = ".template"
)

// templatesDir holds one directory per template.
func (h *Host) templatesDir() string { return filepath.Join(h.cfg.StateDir, "templates") }

func (h *Host) templateDir(name string) (string, error) {
	if err := names.Check("template", name); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	return names.Join(h.templatesDir(), name)
}

// templateRAMPath is a template's RAM file; its extension keeps it apart
// from VMs' RAM files (NAME.ram), which hostd reclaims.
func (h *Host) templateRAMPath(name string) string {
	return filepath.Join(h.layout().ShmRAMDir(), name+templateRAMExt)
}

// Template reads a template's record.
func (h *Host) Template(name string) (Template, error) {
	var t Template
	dir, err := h.templateDir(name)
	if err != nil {
		return t, err
	}
	if err := readJSON(filepath.Join(dir, templateRecord), &t); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return t, fmt.Errorf("template %q: %w", name, ErrNotFound)
		}
		return t, fmt.Errorf("template %q: %w", name, err)
	}
	return t, nil
}

// Templates lists this host's templates, by name.
func (h *Host) Templates() []Template {
	ents, _ := os.ReadDir(h.templatesDir())
	var out []Template
	for _, e := range ents {
		if t, err := h.Template(e.Name()); err == nil {
			if p := h.pool(t.Name); p != nil {
				t.Pool = p.info()
			}
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DeleteTemplate removes a template's files. Running clones keep their
// memory: they map the RAM file, which goes when the last one quits.
func (h *Host) DeleteTemplate(name string) error {
	t, err := h.Template(name)
	if err != nil {
		return err
	}
	dir, _ := h.templateDir(name)
	h.closePool(name)
	h.unpublishTemplate(name)
	if err := t.RAM.Remove(); err != nil {
		return fmt.Errorf("template %q: %w", name, err)
	}
	h.log.Info("template deleted", "template", name)
	return os.RemoveAll(dir)
}

// openTemplateRAM opens the template's RAM file for a clone's QEMU,
// refused unless it is the file hostd made the template with.
func openTemplateRAM(t Template) (*os.File, error) {
	f, err := os.OpenFile(t.RAM.Path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("template %q: RAM file: %v: %w", t.Name, err, ErrRAMFile)
	}
	if d := t.RAM.Replaced(); d != "" {
		f.Close()
		return nil, fmt.Errorf("template %q: %s: %w", t.Name, d, ErrRAMFile)
	}
	return f, nil
}

// openTemplate opens what a clone starts from: the template's RAM file
// (its identity checked) and its device state.
func (h *Host) openTemplate(t Template) (ram, state *os.File, err error) {
	if ram, err = openTemplateRAM(t); err != nil {
		return nil, nil, err
	}
	dir, _ := h.templateDir(t.Name)
	if state, err = os.Open(filepath.Join(dir, templateState)); err != nil {
		ram.Close()
		return nil, nil, fmt.Errorf("template %q: %w", t.Name, err)
	}
	return ram, state, nil
}

// ramIdentity is the identity of the file at path, as qemu.RAMFile
// records one.
func ramIdentity(path string) (qemu.RAMFile, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return qemu.RAMFile{}, err
	}
	return qemu.RAMFile{Path: path, UID: st.Uid, Mode: st.Mode, Dev: st.Dev, Ino: st.Ino}, nil
}

// FileSHA256 hashes a file (tests compare a template's RAM before and
// after its clones ran).
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// randomMAC is a locally administered unicast MAC in QEMU's 52:54:00
// range's neighbour (0x52 has the local bit set).
func randomMAC() string {
	b := make([]byte, 3)
	rand.Read(b)
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", 0x5a, b[0], b[1], b[2])
}

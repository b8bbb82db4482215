package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/hostd/spec"
	"github.com/symvirt/symvirt/hostd/step"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// ErrChecksum is what every refusal wraps (hostd's ErrChecksum).
var ErrChecksum = sentinel.ErrChecksum

// Manifest describes a checkpoint directory. It is written last, so a
// directory without one is incomplete by construction.
type Manifest struct {
	Version   int          `json:"version"`
	VM        string       `json:"vm"`
	Spec      spec.Spec    `json:"spec"`
	CreatedAt time.Time    `json:"created_at"`
	QEMU      string       `json:"qemu_version"`
	Files     []FileDigest `json:"files"`
	// Round is the guest cooperation round the guest was in at the cut; a
	// restore finishes it with the outcome "restored".
	Round *step.Round `json:"round,omitempty"`
	// CloneIdentity: a template clone's kept identity (no seed), which a
	// restored clone takes back (hostd/template_move.go).
	CloneIdentity *guestproto.Clone `json:"clone_identity,omitempty"`
}

// FileDigest is one artifact of a checkpoint.
type FileDigest struct {
	Name   string `json:"name"`
	Role   string `json:"role"` // state | disk | ram (its SHA256 is a SparseDigest)
	ID     string `json:"id,omitempty"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Chunks (a RAM file): its chunks' hash, ChunksSHA256 (none) or
	// ChunksBLAKE3.
	Chunks string `json:"chunks,omitempty"`
	// Parent (a disk): the checkpoint disk this one is a delta over
	// (its qcow2 backing file). Restore checks every link of the chain.
	Parent *Link `json:"parent,omitempty"`
}

// Link names another checkpoint's disk file and what it must be.
type Link struct {
	// Dir is the other checkpoint's directory relative to this one's
	// (both in the checkpoint store): the backing file is Dir/Name.
	Dir    string `json:"dir"`
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

const (
	// Name is the manifest's file in a checkpoint directory.
	Name = "manifest.json"
	// StateName is the checkpoint's one state file (QEMU's stream).
	StateName = "state.bin"
	// MaxSize bounds what is read of a manifest or its signature before
	// checking it.
	MaxSize = 4 << 20
)

// Parse decodes a manifest strictly and checks that every file it
// names is confined to dir.
func Parse(dir string, data []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("checkpoint %s: manifest: %v: %w", dir, err, ErrChecksum)
	}
	if err := Check(m); err != nil {
		return m, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	return m, nil
}

// Check: one state file, state.bin; one file per disk of the
// spec, which the spec's disk path names; every name plain and unique.
func Check(m Manifest) error {
	if m.Version != 1 || m.VM == "" || len(m.Files) == 0 {
		return fmt.Errorf("manifest is malformed (version %d, vm %q, %d files): %w", m.Version, m.VM, len(m.Files), ErrChecksum)
	}
	seen := map[string]bool{}
	states, rams := 0, 0
	for _, f := range m.Files {
		if !PlainName(f.Name) {
			return fmt.Errorf("manifest: file name %q is not a plain name inside the checkpoint directory: %w", f.Name, ErrChecksum)
		}
		if seen[f.Name] {
			return fmt.Errorf("manifest: file %q listed twice: %w", f.Name, ErrChecksum)
		}
		seen[f.Name] = true
		switch {
		case f.Role == "state" && f.Name == StateName:
			states++
		case f.Role == "ram" && f.Name == RAMName && rams == 0:
			rams++
		case f.Role == "disk" && f.Parent != nil:
			if err := checkLink(*f.Parent); err != nil {
				return fmt.Errorf("manifest: file %q: %w", f.Name, err)
			}
		case f.Role == "disk":
		default:
			return fmt.Errorf("manifest: file %q has role %q: want state (%s), one ram (%s) or disk: %w", f.Name, f.Role, StateName, RAMName, ErrChecksum)
		}
	}
	if states != 1 {
		return fmt.Errorf("manifest: %d state files, want one %s: %w", states, StateName, ErrChecksum)
	}
	disks := 0
	for _, d := range m.Spec.Disks {
		f, ok := m.File("disk", d.ID)
		if !ok || d.Path != f.Name {
			return fmt.Errorf("manifest: disk %q: path %q is not the checkpoint's copy of it: %w", d.ID, d.Path, ErrChecksum)
		}
		disks++
	}
	if disks != len(m.Files)-1-rams {
		return fmt.Errorf("manifest: %d disk files for %d disks: %w", len(m.Files)-1-rams, disks, ErrChecksum)
	}
	return nil
}

// File returns the manifest's entry of a role (and disk ID).
func (m Manifest) File(role, id string) (FileDigest, bool) {
	for _, f := range m.Files {
		if f.Role == role && f.ID == id {
			return f, true
		}
	}
	return FileDigest{}, false
}

// Read loads a checkpoint's manifest and checks its form and that
// it names only files of dir, but not its signature: it tells whether a
// checkpoint is complete. A restore reads it through hostd, which checks the
// signature first.
func Read(dir string) (Manifest, error) {
	data, err := ReadInDir(dir, Name)
	if errors.Is(err, os.ErrNotExist) {
		return Manifest{}, fmt.Errorf("checkpoint %s: no manifest (incomplete or not a checkpoint): %w", dir, jsonapi.ErrNotFound)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	return Parse(dir, data)
}

// Verify checks every file's size and sha256 against the
// manifest (integrity, for tools and tests; not the signature, which a
// restore checks, and which a restore needs no pre-pass for: it hashes
// the state as QEMU reads it and each disk as it copies it).
func Verify(dir string) (Manifest, error) {
	m, err := Read(dir)
	if err != nil {
		return m, err
	}
	for _, fd := range m.Files {
		f, err := OpenInDir(dir, fd.Name)
		if err != nil {
			return m, fmt.Errorf("checkpoint %s: %w", dir, err)
		}
		n, sum, err := digestOf(f, fd)
		f.Close()
		if err != nil {
			return m, err
		}
		if n != fd.Size || sum != fd.SHA256 {
			return m, fmt.Errorf("checkpoint %s: file %s (%d bytes) does not match its manifest: %w", dir, fd.Name, n, ErrChecksum)
		}
	}
	return m, nil
}

// digestOf is f's size and digest as fd's role has it.
func digestOf(f *os.File, fd FileDigest) (int64, string, error) {
	if fd.Role == "ram" {
		st, err := f.Stat()
		if err != nil {
			return 0, "", err
		}
		sum, err := SparseDigest(f, st.Size(), fd.Chunks)
		return st.Size(), sum, err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// checkLink: a relative directory and a plain name.
func checkLink(l Link) error {
	if l.Dir == "" || filepath.IsAbs(l.Dir) || strings.ContainsRune(l.Dir, 0) || !PlainName(l.Name) || l.SHA256 == "" {
		return fmt.Errorf("parent link %+v is not a relative directory and a plain name with a digest: %w", l, ErrChecksum)
	}
	return nil
}

package hostd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A checkpoint's files are confined to its directory: the manifest names
// each by a plain name, opened there without following a symlink, and it
// must be a regular file. The restored spec's disks are the checkpoint's
// copies, nothing else.

// parseManifest decodes a manifest strictly and checks that every file it
// names is confined to dir.
func parseManifest(dir string, data []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("checkpoint %s: manifest: %v: %w", dir, err, ErrChecksum)
	}
	if err := checkManifest(m); err != nil {
		return m, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	return m, nil
}

// checkManifest: one state file, state.bin; one file per disk of the
// spec, which the spec's disk path names; every name plain and unique.
func checkManifest(m Manifest) error {
	if m.Version != 1 || m.VM == "" || len(m.Files) == 0 {
		return fmt.Errorf("manifest is malformed (version %d, vm %q, %d files): %w", m.Version, m.VM, len(m.Files), ErrChecksum)
	}
	seen := map[string]bool{}
	states := 0
	for _, f := range m.Files {
		if !plainName(f.Name) {
			return fmt.Errorf("manifest: file name %q is not a plain name inside the checkpoint directory: %w", f.Name, ErrChecksum)
		}
		if seen[f.Name] {
			return fmt.Errorf("manifest: file %q listed twice: %w", f.Name, ErrChecksum)
		}
		seen[f.Name] = true
		switch {
		case f.Role == "state" && f.Name == stateName:
			states++
		case f.Role == "disk":
		default:
			return fmt.Errorf("manifest: file %q has role %q: want state (%s) or disk: %w", f.Name, f.Role, stateName, ErrChecksum)
		}
	}
	if states != 1 {
		return fmt.Errorf("manifest: %d state files, want one %s: %w", states, stateName, ErrChecksum)
	}
	disks := 0
	for _, d := range m.Spec.Disks {
		f, ok := m.file("disk", d.ID)
		if !ok || d.Path != f.Name {
			return fmt.Errorf("manifest: disk %q: path %q is not the checkpoint's copy of it: %w", d.ID, d.Path, ErrChecksum)
		}
		disks++
	}
	if disks != len(m.Files)-1 {
		return fmt.Errorf("manifest: %d disk files for %d disks: %w", len(m.Files)-1, disks, ErrChecksum)
	}
	return nil
}

// file returns the manifest's entry of a role (and disk ID).
func (m Manifest) file(role, id string) (FileDigest, bool) {
	for _, f := range m.Files {
		if f.Role == role && f.ID == id {
			return f, true
		}
	}
	return FileDigest{}, false
}

func plainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00") &&
		filepath.Base(name) == name
}

// openInDir opens the plain name in dir for reading: no symlink (in the
// last component; the name has no other), a regular file (a FIFO would
// block, a device is not a checkpoint's).
func openInDir(dir, name string) (*os.File, error) {
	if !plainName(name) {
		return nil, fmt.Errorf("%q is not a plain file name: %w", name, ErrChecksum)
	}
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("%s is a symlink: %w", path, ErrChecksum)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file (%s): %w", path, st.Mode().Type(), ErrChecksum)
	}
	// Blocking reads from here; O_NONBLOCK only kept open from hanging.
	if err := unix.SetNonblock(fd, false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readInDir reads a small file (a manifest or its signature) of dir.
func readInDir(dir, name string) ([]byte, error) {
	f, err := openInDir(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("%s is over %d bytes: %w", filepath.Join(dir, name), maxManifestSize, ErrChecksum)
	}
	return data, nil
}

// copyVerified copies the checkpoint's file want into dst (new, in the
// VM's own directory), hashing it on the way, and fails unless it is the
// manifest's. QEMU opens the copy, which nobody else can write, so a later
// change to the checkpoint cannot reach the guest.
func copyVerified(dir string, want FileDigest, dst string) error {
	in, err := openInDir(dir, want.Name)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	defer in.Close()
	got, err := copyDigest(in, dst)
	if err == nil && (got.Size != want.Size || got.SHA256 != want.SHA256) {
		err = fmt.Errorf("checkpoint %s: file %s (%d bytes, sha256 %s) does not match its signed manifest (%d bytes, sha256 %s): %w",
			dir, want.Name, got.Size, got.SHA256, want.Size, want.SHA256, ErrChecksum)
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

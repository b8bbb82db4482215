package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/symvirt/symvirt/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// A checkpoint's files are confined to its directory: the manifest names
// each by a plain name, opened there without following a symlink, and it
// must be a regular file. The restored spec's disks are the checkpoint's
// copies, nothing else.

// PlainName reports whether name is a file name of its directory itself:
// no separator, not "." or "..".
func PlainName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00") &&
		filepath.Base(name) == name
}

// OpenInDir opens the plain name in dir for reading: no symlink (in the
// last component; the name has no other), a regular file (a FIFO would
// block, a device is not a checkpoint's).
func OpenInDir(dir, name string) (*os.File, error) {
	if !PlainName(name) {
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

// ReadInDir reads a small file (a manifest or its signature) of dir.
func ReadInDir(dir, name string) ([]byte, error) {
	f, err := OpenInDir(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%s is over %d bytes: %w", filepath.Join(dir, name), MaxSize, ErrChecksum)
	}
	return data, nil
}

// CopyVerified copies the checkpoint's file want into dst (new, in the
// VM's own directory), hashing it on the way, and fails unless it is the
// manifest's. QEMU opens the copy, which nobody else can write, so a later
// change to the checkpoint cannot reach the guest.
func CopyVerified(dir string, want FileDigest, dst string) error {
	in, err := OpenInDir(dir, want.Name)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	defer in.Close()
	got, err := CopyDigest(in, dst)
	if err == nil && (got.Size != want.Size || got.SHA256 != want.SHA256) {
		err = fmt.Errorf("checkpoint %s: file %s (%d bytes, sha256 %s) does not match its signed manifest (%d bytes, sha256 %s): %w",
			dir, want.Name, got.Size, got.SHA256, want.Size, want.SHA256, ErrChecksum)
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

// CopyFile copies src to dst, syncing and hashing it.
func CopyFile(src, dst string) (FileDigest, error) {
	in, err := os.Open(src)
	if err != nil {
		return FileDigest{Name: filepath.Base(dst)}, err
	}
	defer in.Close()
	return CopyDigest(in, dst)
}

// CopyDigest copies in to dst (new), syncing and hashing it.
func CopyDigest(in *os.File, dst string) (FileDigest, error) {
	fd := FileDigest{Name: filepath.Base(dst)}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fd, err
	}
	defer out.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err != nil {
		return fd, err
	}
	if err := out.Sync(); err != nil {
		return fd, err
	}
	if err := out.Close(); err != nil {
		return fd, err
	}
	fd.Size, fd.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	return fd, atomicfile.SyncDir(filepath.Dir(dst))
}

// HashFile hashes the file at path.
func HashFile(path string) (FileDigest, error) {
	fd := FileDigest{Name: filepath.Base(path)}
	f, err := os.Open(path)
	if err != nil {
		return fd, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fd, fmt.Errorf("read back %s: %w", path, err)
	}
	fd.Size, fd.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	return fd, nil
}

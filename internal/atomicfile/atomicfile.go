package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// syncDir is a variable so tests can see which directories are synced.
var syncDir = SyncDir

// WriteFile replaces path with data: a temporary file in the same
// directory, created 0600 with O_EXCL (never following someone's file or
// symlink), written, fsynced, given perm, renamed over path, and the
// directory fsynced. On every error the temporary file is removed.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return write(path, data, perm, false)
}

// WriteFileNew is WriteFile that never replaces an existing path: it
// fails with fs.ErrExist when path exists.
func WriteFileNew(path string, data []byte, perm fs.FileMode) error {
	return write(path, data, perm, true)
}

func write(path string, data []byte, perm fs.FileMode, noClobber bool) (err error) {
	dir := filepath.Dir(path)
	f, tmp, err := createTemp(dir, filepath.Base(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if perm != 0o600 {
		if err := f.Chmod(perm); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if noClobber {
		if err := publishNew(tmp, path); err != nil {
			return err
		}
	} else if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// createTemp makes a fresh 0600 file next to base in dir with O_EXCL.
func createTemp(dir, base string) (*os.File, string, error) {
	for range 10 {
		b := make([]byte, 6)
		rand.Read(b)
		tmp := filepath.Join(dir, "."+base+".tmp-"+hex.EncodeToString(b))
		f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, tmp, err
	}
	return nil, "", fmt.Errorf("no free temporary name in %s: %w", dir, fs.ErrExist)
}

// publishNew moves tmp to path unless path exists: a hard link is atomic;
// where links are not supported, check then rename.
func publishNew(tmp, path string) error {
	err := os.Link(tmp, path)
	if err == nil {
		return os.Remove(tmp)
	}
	if errors.Is(err, fs.ErrExist) {
		return err
	}
	if _, serr := os.Lstat(path); serr == nil {
		return fs.ErrExist
	}
	return os.Rename(tmp, path)
}

// SyncDir makes the entries of dir durable (a created, renamed or removed
// file in it survives a crash).
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// MkdirAll is os.MkdirAll whose every created directory is durable: the
// parent of each one it creates is fsynced after the mkdir.
func MkdirAll(dir string, perm fs.FileMode) error {
	dir = filepath.Clean(dir)
	st, err := os.Stat(dir)
	if err == nil {
		if !st.IsDir() {
			return fmt.Errorf("mkdir %s: not a directory", dir)
		}
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := MkdirAll(parent, perm); err != nil {
			return err
		}
	}
	if err := Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

// Mkdir creates dir (its parent must exist) and fsyncs the parent.
func Mkdir(dir string, perm fs.FileMode) error {
	if err := os.Mkdir(dir, perm); err != nil {
		return err
	}
	return syncDir(filepath.Dir(filepath.Clean(dir)))
}

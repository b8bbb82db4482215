package qemu

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/symvirt/symvirt/internal/mountinfo"
	"golang.org/x/sys/unix"
)

// DefaultShmDir is where shared guest RAM lives unless the host's config
// names another tmpfs: a tmpfs that outlives QEMU.
const DefaultShmDir = "/dev/shm"

// CheckShmDir returns dir, cleaned, if it can hold guest RAM files: an
// absolute path to a directory on a tmpfs (anywhere else they would be
// written out to a disk) that other users cannot write, or only with the
// sticky bit (as /dev/shm), so that none can move hostd's directory there.
func CheckShmDir(dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("%s: want an absolute path", dir)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return "", fmt.Errorf("%s: %w", dir, err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return "", fmt.Errorf("%s is not on a tmpfs (file system type %#x): guest RAM there would be written to a disk", dir, fs.Type)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return "", fmt.Errorf("%s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "", fmt.Errorf("%s is not a directory", dir)
	}
	if st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 {
		return "", fmt.Errorf("%s has mode %#o: other users can write it without the sticky bit (chmod o-w or +t)", dir, st.Mode&0o7777)
	}
	return filepath.Clean(dir), nil
}

// FreeBytes is how many bytes the file system holding dir has free.
func FreeBytes(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// ShmHuge is the huge= mount option of the tmpfs holding dir ("never"
// when it has none: a tmpfs's default), from /proc/self/mountinfo.
func ShmHuge(dir string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return hugeOption(io.LimitReader(f, 16<<20), dir)
}

// hugeOption reads mountinfo's lines for the mount point holding dir (the
// longest that contains it, the last of equals: the one on top) and
// returns its huge= option.
func hugeOption(r io.Reader, dir string) (string, error) {
	best, huge := "", ""
	err := mountinfo.Read(r, func(m mountinfo.Mount) bool {
		if within(dir, m.Point) && len(m.Point) >= len(best) {
			best, huge = m.Point, "never"
			if v, ok := m.Option("huge"); ok {
				huge = v
			}
		}
		return true
	})
	if err != nil {
		return "", err
	}
	if best == "" {
		return "", fmt.Errorf("%s: no mount holds it in /proc/self/mountinfo", dir)
	}
	return huge, nil
}

// within reports whether path is mnt or below it.
func within(path, mnt string) bool {
	return mnt == "/" || path == mnt || strings.HasPrefix(path, mnt+"/")
}

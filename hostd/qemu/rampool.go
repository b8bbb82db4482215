package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"golang.org/x/sys/unix"
)

// PoolPrefix starts the name of a pooled RAM file in hostd's RAM
// directory (never NAME.ram: no VM's file, orphan or stale one).
const PoolPrefix = ".pool-"

// Pool hands OpenRAM a zeroed RAM file for a new one (nil: none) and frees
// room on /dev/shm when a new file would not fit.
type Pool interface {
	// Take renames a pooled file of size bytes to path, in dir, and opens
	// it; ok is false when it has none.
	Take(dir *os.File, path string, size int64) (f *os.File, id *RAMFile, ok bool)
	// Reclaim frees every pooled file not being handed out.
	Reclaim()
}

// Rename moves the file id is to name in the same directory, refused
// unless the file at id's path is id and nothing is at name; it returns
// the file's identity at its new path.
func (id RAMFile) Rename(name string) (RAMFile, error) {
	dir, err := OpenRAMDir(filepath.Dir(id.Path))
	if err != nil {
		return id, err
	}
	defer dir.Close()
	return renameAt(dir, id, filepath.Join(filepath.Dir(id.Path), name))
}

// renameAt renames id to path (in dir, id's directory), refusing a file
// that is no longer id or a path that exists.
func renameAt(dir *os.File, id RAMFile, path string) (RAMFile, error) {
	if d := id.Replaced(); d != "" {
		return id, fmt.Errorf("%s: %w", d, sentinel.ErrRAMFile)
	}
	if err := unix.Renameat2(int(dir.Fd()), filepath.Base(id.Path), int(dir.Fd()), filepath.Base(path), unix.RENAME_NOREPLACE); err != nil {
		return id, fmt.Errorf("rename guest RAM file %s to %s: %w", id.Path, path, err)
	}
	id.Path = path
	return id, nil
}

// TakeAt renames the pooled file id to path in dir and opens it for a new
// QEMU, truncated to size (a larger file's tail is freed).
func TakeAt(dir *os.File, id RAMFile, path string, size int64) (*os.File, *RAMFile, error) {
	moved, err := renameAt(dir, id, path)
	if err != nil {
		return nil, nil, err
	}
	f, err := openAt(dir, path, &moved)
	if err == nil {
		err = f.Truncate(size)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, nil, err
	}
	return f, &moved, nil
}

// OpenedByAny is a process other than this one that has the file open (0:
// none): a pooled file is handed to another VM only once nothing else
// can read or write its pages. QEMU keeps its RAM file open for as long
// as it maps it. (Its descriptors, not its mappings: reading a process's
// maps takes its mmap lock, and a reader at the lowest priority that is
// preempted holding it stalls that QEMU.)
func (id RAMFile) OpenedByAny() int {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if id.openedBy(pid) {
			return pid
		}
	}
	return 0
}

// openedBy reports whether one of process pid's descriptors is the file.
func (id RAMFile) openedBy(pid int) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, _ := os.ReadDir(dir)
	for _, fd := range fds {
		var st unix.Stat_t
		if unix.Stat(dir+"/"+fd.Name(), &st) == nil && st.Dev == id.Dev && st.Ino == id.Ino {
			return true
		}
	}
	return false
}

// RemovePooled removes every pooled file in dir (hostd's RAM directory):
// a file an earlier hostd left there was maybe not zeroed.
func RemovePooled(dir string) ([]string, error) {
	return removeIn(dir, func(n string) bool { return strings.HasPrefix(n, PoolPrefix) })
}

// CreatePooled creates an empty RAM file named name (PoolPrefix and a
// number) in dir, hostd's RAM directory, for the pool to fill.
func CreatePooled(dir, name string) (RAMFile, error) {
	d, err := OpenRAMDir(dir)
	if err != nil {
		return RAMFile{}, err
	}
	defer d.Close()
	f, id, err := createAt(d, filepath.Join(dir, name))
	if err != nil {
		return RAMFile{}, err
	}
	f.Close()
	return *id, nil
}

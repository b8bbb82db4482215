package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/hostd/spec"
	"golang.org/x/sys/unix"
)

const (
	ramDirMode  = 0o700
	ramFileMode = 0o600
	// ramFD is the descriptor the RAM file has in QEMU (its first extra
	// file); QEMU's memory-backend-file reopens it through /proc, so it
	// maps exactly the file hostd checked, whatever the path holds then.
	ramFD = 3
)

// RAMFile is a guest RAM file as hostd created it: /dev/shm is
// world-writable and the names predictable, so a file found at the path
// later is used only if it is this one.
type RAMFile struct {
	Path string `json:"path"`
	UID  uint32 `json:"uid"`
	Mode uint32 `json:"mode"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

func identityOf(path string, st *unix.Stat_t) RAMFile {
	return RAMFile{Path: path, UID: st.Uid, Mode: st.Mode, Dev: st.Dev, Ino: st.Ino}
}

// differs says how a file found at the path is not the one hostd created
// ("" when it is).
func (id RAMFile) differs(path string, st *unix.Stat_t) string {
	var d []string
	add := func(differ bool, format string, a ...any) {
		if differ {
			d = append(d, fmt.Sprintf(format, a...))
		}
	}
	add(path != id.Path, "path %s, hostd created %s", path, id.Path)
	add(st.Dev != id.Dev || st.Ino != id.Ino, "inode %d on device %d:%d, hostd created inode %d on %d:%d",
		st.Ino, unix.Major(st.Dev), unix.Minor(st.Dev), id.Ino, unix.Major(id.Dev), unix.Minor(id.Dev))
	add(st.Uid != id.UID, "owner uid %d, hostd created it as uid %d", st.Uid, id.UID)
	add(st.Mode != id.Mode, "mode %#o, hostd created it %#o", st.Mode, id.Mode)
	return strings.Join(d, "; ")
}

// Replaced says how the file at id's path is not id ("" when it is, or
// when id is nil).
func (id *RAMFile) Replaced() string {
	if id == nil {
		return ""
	}
	var st unix.Stat_t
	if err := unix.Lstat(id.Path, &st); err != nil {
		return fmt.Sprintf("guest RAM file %s: %v", id.Path, err)
	}
	if d := id.differs(id.Path, &st); d != "" {
		return fmt.Sprintf("guest RAM file %s was replaced (%s)", id.Path, d)
	}
	return ""
}

// Remove deletes the file if it is id; another file at the path stays for
// the operator. A QEMU that still maps it keeps its memory.
func (id RAMFile) Remove() error {
	if _, err := os.Lstat(id.Path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if d := id.Replaced(); d != "" {
		return fmt.Errorf("%s: left in place: %w", d, sentinel.ErrRAMFile)
	}
	// Freeing a GiB of tmpfs pages takes a few hundred milliseconds,
	// which nobody needs to wait for: a descriptor keeps them past the
	// unlink, and its close, off the caller's path, frees them.
	f, _ := os.OpenFile(id.Path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	err := os.Remove(id.Path)
	if f != nil {
		go CloseLowest(f)
	}
	return err
}

// CloseLowest closes f at the lowest priority. The last close of a
// removed RAM file frees its pages, 0.12 s of a core a GiB populated here:
// run beside what follows (a restore of the same VM starting its QEMU and
// loading its RAM), it would take that core from it.
func CloseLowest(f *os.File) {
	runtime.LockOSThread() // the thread ends with the goroutine
	unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
	f.Close()
}

// MappedBy reports whether process pid maps the file (its /proc/PID/maps
// names the device and inode of every file mapping).
func (id RAMFile) MappedBy(pid int) bool {
	if pid <= 0 {
		return false
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return false
	}
	defer f.Close()
	dev := fmt.Sprintf("%02x:%02x", unix.Major(id.Dev), unix.Minor(id.Dev))
	ino := strconv.FormatUint(id.Ino, 10)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fl := strings.Fields(sc.Text()); len(fl) >= 5 && fl[3] == dev && fl[4] == ino {
			return true
		}
	}
	return false
}

// OpenRAMDir creates the directory (0700) or opens the existing one, and
// refuses one that is a symbolic link or that another user or a wider mode
// could reach: someone made it before hostd did. It is never chmod-ed into
// shape, as its files could already be someone else's.
func OpenRAMDir(dir string) (*os.File, error) {
	created := false
	if err := os.Mkdir(dir, ramDirMode); err == nil {
		created = true
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("guest RAM directory: %w", err)
	}
	if st, err := os.Lstat(dir); err == nil && st.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(dir)
		return nil, fmt.Errorf("guest RAM directory %s is a symbolic link (to %s), not hostd's own directory: remove it: %w", dir, target, sentinel.ErrRAMFile)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("guest RAM directory %s: %v: %w", dir, err, sentinel.ErrRAMFile)
	}
	f := os.NewFile(uintptr(fd), dir)
	if created { // only the umask can have narrowed it
		err = f.Chmod(ramDirMode)
	}
	var st unix.Stat_t
	if err == nil {
		err = unix.Fstat(fd, &st)
	}
	if uid := uint32(os.Geteuid()); err == nil && (st.Uid != uid || st.Mode&0o7777 != ramDirMode) {
		err = fmt.Errorf("guest RAM directory %s has owner uid %d and mode %#o, hostd's own is uid %d and %#o: someone else made it; remove it: %w",
			dir, st.Uid, st.Mode&0o7777, uid, ramDirMode, sentinel.ErrRAMFile)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// OpenRAM opens the RAM file at path for a new QEMU: the one hostd created
// (want, a crashed QEMU's) or, if none is there, a zeroed one from pool
// (nil: none) or a new one, whose identity it returns (created) for the
// caller to record before QEMU sees it.
func OpenRAM(path string, want *RAMFile, mem spec.Size, huge bool, pool Pool) (f *os.File, created *RAMFile, err error) {
	dir, err := OpenRAMDir(filepath.Dir(path))
	if err != nil {
		return nil, nil, err
	}
	defer dir.Close()
	f, err = openAt(dir, path, want)
	if !errors.Is(err, unix.ENOENT) {
		return f, nil, err
	}
	if pool != nil {
		if f, id, ok := pool.Take(dir, path, int64(mem)<<20); ok {
			return f, id, nil
		}
	}
	err = ramRoom(filepath.Dir(path), mem, huge)
	if err != nil && pool != nil {
		pool.Reclaim()
		err = ramRoom(filepath.Dir(path), mem, huge)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", sentinel.ErrQEMUStart, err)
	}
	return createAt(dir, path)
}

// OpenWarmRAM opens the RAM file a running QEMU (pid) maps, for a new QEMU
// that takes its guest over (warm restart): it must be want, in place.
func OpenWarmRAM(path string, want *RAMFile, pid int) (*os.File, error) {
	if want == nil {
		return nil, fmt.Errorf("its qemu was started without a guest RAM file recorded by hostd (an older hostd): use checkpoint and restore: %w", sentinel.ErrRAMFile)
	}
	dir, err := OpenRAMDir(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	f, err := openAt(dir, path, want)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("guest RAM file %s is gone (a QEMU started by an older hostd keeps RAM elsewhere): use checkpoint and restore: %w", path, sentinel.ErrRAMFile)
	}
	if err == nil && !want.MappedBy(pid) {
		f.Close()
		return nil, fmt.Errorf("the running qemu (pid %d) does not map guest RAM file %s (inode %d): refused: %w", pid, path, want.Ino, sentinel.ErrRAMFile)
	}
	return f, err
}

// openAt opens an existing RAM file, refused unless it is want; an error
// wrapping unix.ENOENT when there is none.
func openAt(dir *os.File, path string, want *RAMFile) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), filepath.Base(path), unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("guest RAM file %s is a symbolic link: hostd did not create it; refused: %w", path, sentinel.ErrRAMFile)
	case errors.Is(err, unix.ENOENT):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("guest RAM file: %w", err)
	case want == nil:
		unix.Close(fd)
		return nil, fmt.Errorf("guest RAM file %s exists but hostd has no record of creating it: refused (remove it if no QEMU uses it): %w", path, sentinel.ErrRAMFile)
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, err
	}
	if d := want.differs(path, &st); d != "" {
		f.Close()
		return nil, fmt.Errorf("guest RAM file %s was replaced (%s): refused: %w", path, d, sentinel.ErrRAMFile)
	}
	return f, nil
}

func createAt(dir *os.File, path string) (*os.File, *RAMFile, error) {
	fd, err := unix.Openat(int(dir.Fd()), filepath.Base(path),
		unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, ramFileMode)
	if err != nil {
		return nil, nil, fmt.Errorf("create guest RAM file %s: %v: %w", path, err, sentinel.ErrRAMFile)
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	err = f.Chmod(ramFileMode) // the umask may have narrowed it
	if err == nil {
		err = unix.Fstat(fd, &st)
	}
	if err != nil {
		f.Close()
		unix.Unlinkat(int(dir.Fd()), filepath.Base(path), 0)
		return nil, nil, fmt.Errorf("guest RAM file %s: %w", path, err)
	}
	id := identityOf(path, &st)
	return f, &id, nil
}

// ramRoom says why a new RAM file of this size would not fit: a tmpfs or
// a hugetlbfs out of room kills QEMU with SIGBUS at the first touch.
func ramRoom(dir string, mem spec.Size, huge bool) error {
	if !huge {
		if FreeBytes(dir) < int64(mem)<<20 {
			return fmt.Errorf("%s has no room for %d MiB of shared guest RAM (see stale files in hostd's status)", dir, mem)
		}
		return nil
	}
	data, err := os.ReadFile("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
	if err != nil {
		return fmt.Errorf("hugepages: %w", err)
	}
	free, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if need := int(mem) / 2; free < need {
		return fmt.Errorf("hugepages: %d MiB of guest RAM needs %d free 2 MiB pages, %d are free (sysctl vm.nr_hugepages)", mem, need, free)
	}
	return nil
}

// HugetlbfsDir is the first hugetlbfs of 2 MiB pages mounted here, or "".
func HugetlbfsDir() string {
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[2] == "hugetlbfs" && (!strings.Contains(f[3], "pagesize=") || strings.Contains(f[3], "pagesize=2M")) {
			return strings.ReplaceAll(f[1], `\040`, " ")
		}
	}
	return ""
}

// RemoveRAMFiles removes the RAM files (NAME.ram) in dir, hostd's own RAM
// directory (one OpenRAMDir refuses is not touched), whose NAME orphan
// says nothing needs, and returns the ones it removed.
func RemoveRAMFiles(dir string, orphan func(name string) bool) ([]string, error) {
	return removeIn(dir, func(n string) bool {
		vm, ok := strings.CutSuffix(n, ".ram")
		return ok && orphan(vm)
	})
}

// removeIn removes the files in dir, hostd's own RAM directory, whose
// names match, and returns the ones it removed.
func removeIn(dir string, match func(name string) bool) ([]string, error) {
	d, err := OpenRAMDir(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	var removed []string
	for _, n := range names {
		if !match(n) {
			continue
		}
		if uerr := unix.Unlinkat(int(d.Fd()), n, 0); uerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", filepath.Join(dir, n), uerr))
			continue
		}
		removed = append(removed, filepath.Join(dir, n))
	}
	return removed, err
}

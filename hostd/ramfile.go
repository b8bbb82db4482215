package hostd

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Guest RAM on shared memory is a file every local user could otherwise
// reach: /dev/shm is world-writable and the names are predictable. So the
// files live in a directory of this hostd's own (0700), hostd creates each
// one itself (O_EXCL, O_NOFOLLOW, 0600) and hands QEMU the open file, and
// hostd records which file it created: a file found at the path later
// (restart after a crash, warm restart, re-adoption) must be that one.

const (
	ramDirMode  = 0o700
	ramFileMode = 0o600
	// ramFD is the descriptor the RAM file has in QEMU (its first extra
	// file); QEMU's memory-backend-file reopens it through /proc, so it
	// maps exactly the file hostd checked, whatever the path holds then.
	ramFD = 3
)

// ramIdentity is a RAM file as hostd created it.
type ramIdentity struct {
	Path string `json:"path"`
	UID  uint32 `json:"uid"`
	Mode uint32 `json:"mode"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

func identityOf(path string, st *unix.Stat_t) ramIdentity {
	return ramIdentity{Path: path, UID: st.Uid, Mode: st.Mode, Dev: st.Dev, Ino: st.Ino}
}

// differs says how a file found at the path is not the one hostd created
// ("" when it is).
func (id ramIdentity) differs(path string, st *unix.Stat_t) string {
	var d []string
	if path != id.Path {
		d = append(d, fmt.Sprintf("path %s, hostd created %s", path, id.Path))
	}
	if st.Dev != id.Dev || st.Ino != id.Ino {
		d = append(d, fmt.Sprintf("inode %d on device %d:%d, hostd created inode %d on %d:%d",
			st.Ino, unix.Major(st.Dev), unix.Minor(st.Dev), id.Ino, unix.Major(id.Dev), unix.Minor(id.Dev)))
	}
	if st.Uid != id.UID {
		d = append(d, fmt.Sprintf("owner uid %d, hostd created it as uid %d", st.Uid, id.UID))
	}
	if st.Mode != id.Mode {
		d = append(d, fmt.Sprintf("mode %#o, hostd created it %#o", st.Mode, id.Mode))
	}
	return strings.Join(d, "; ")
}

// openRAMDir creates the directory (0700) or opens the existing one, and
// refuses one that is a symbolic link or that another user or a wider mode
// could reach: someone made it before hostd did. It is never chmod-ed into
// shape, as its files could already be someone else's.
func openRAMDir(dir string) (*os.File, error) {
	created := false
	if err := os.Mkdir(dir, ramDirMode); err == nil {
		created = true
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("guest RAM directory: %w", err)
	}
	if st, err := os.Lstat(dir); err == nil && st.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(dir)
		return nil, fmt.Errorf("guest RAM directory %s is a symbolic link (to %s), not hostd's own directory: remove it: %w", dir, target, ErrRAMFile)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("guest RAM directory %s: %v: %w", dir, err, ErrRAMFile)
	}
	f := os.NewFile(uintptr(fd), dir)
	if created {
		// Only the umask can have narrowed it; it is new and ours.
		if err := f.Chmod(ramDirMode); err != nil {
			f.Close()
			return nil, err
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, err
	}
	if uid := uint32(os.Geteuid()); st.Uid != uid || st.Mode&0o7777 != ramDirMode {
		f.Close()
		return nil, fmt.Errorf("guest RAM directory %s has owner uid %d and mode %#o, hostd's own is uid %d and %#o: someone else made it; remove it: %w",
			dir, st.Uid, st.Mode&0o7777, uid, ramDirMode, ErrRAMFile)
	}
	return f, nil
}

// qemuRAM is the RAM file a QEMU being started gets.
type qemuRAM struct {
	vm      *VM
	f       *os.File
	created bool // by this start: removed again if QEMU does not start
}

// qemuRAM opens the RAM file for a new QEMU of the VM, when its spec asks
// for shared memory, and points l's mem-path at it (nil, nil otherwise).
func (vm *VM) qemuRAM(l *launch) (*qemuRAM, error) {
	if !l.spec.UsesSharedMemory() {
		return nil, nil
	}
	f, created, err := vm.ramFile(l.spec, l.warm)
	if err != nil {
		return nil, err
	}
	l.shm = fmt.Sprintf("/proc/self/fd/%d", ramFD)
	return &qemuRAM{vm: vm, f: f, created: created}, nil
}

// files is what QEMU inherits: the RAM file as descriptor ramFD.
func (r *qemuRAM) files() []*os.File {
	if r == nil {
		return nil
	}
	return []*os.File{r.f}
}

// release closes hostd's descriptor (QEMU has its own); a file made for a
// QEMU that did not start goes again.
func (r *qemuRAM) release(failed bool) {
	if r == nil {
		return
	}
	r.f.Close()
	if failed && r.created {
		r.vm.removeRAM()
	}
}

// ramFile opens the VM's RAM file for a new QEMU. A file already at the
// path must be the one hostd created (a crashed QEMU's, or the running
// one's for a warm restart, warm set); otherwise it is created here.
func (vm *VM) ramFile(spec Spec, warm bool) (_ *os.File, created bool, err error) {
	path := vm.h.ramPath(spec)
	dir, err := openRAMDir(filepath.Dir(path))
	if err != nil {
		return nil, false, fmt.Errorf("vm %q: %w", vm.name, err)
	}
	defer dir.Close()
	vm.mu.Lock()
	want, pid := vm.rt.RAM, vm.rt.PID
	vm.mu.Unlock()
	fd, err := unix.Openat(int(dir.Fd()), filepath.Base(path), unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		f := os.NewFile(uintptr(fd), path)
		if err := vm.checkRAM(f, path, want, warm, pid); err != nil {
			f.Close()
			return nil, false, err
		}
		return f, false, nil
	case errors.Is(err, unix.ELOOP):
		return nil, false, fmt.Errorf("vm %q: guest RAM file %s is a symbolic link: hostd did not create it; refused: %w", vm.name, path, ErrRAMFile)
	case errors.Is(err, unix.ENOENT) && warm:
		return nil, false, fmt.Errorf("vm %q: guest RAM file %s is gone (a QEMU started by an older hostd keeps RAM elsewhere): use checkpoint and restore: %w", vm.name, path, ErrRAMFile)
	case errors.Is(err, unix.ENOENT):
		if err := vm.h.ramRoom(spec); err != nil {
			return nil, false, fmt.Errorf("vm %q: %w: %v", vm.name, ErrQEMUStart, err)
		}
		f, err := vm.createRAM(dir, path)
		return f, err == nil, err
	default:
		return nil, false, fmt.Errorf("vm %q: guest RAM file: %w", vm.name, err)
	}
}

// checkRAM refuses a RAM file found in place unless it is the one hostd
// created and, for a warm restart, the one the running QEMU maps.
func (vm *VM) checkRAM(f *os.File, path string, want *ramIdentity, warm bool, pid int) error {
	if want == nil {
		return fmt.Errorf("vm %q: guest RAM file %s exists but hostd has no record of creating it: refused (remove it if no QEMU uses it): %w", vm.name, path, ErrRAMFile)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if d := want.differs(path, &st); d != "" {
		return fmt.Errorf("vm %q: guest RAM file %s was replaced (%s): refused, the VM is not started on it: %w", vm.name, path, d, ErrRAMFile)
	}
	if warm && !qemuMaps(pid, *want) {
		return fmt.Errorf("vm %q: the running qemu (pid %d) does not map guest RAM file %s (inode %d): refused: %w", vm.name, pid, path, want.Ino, ErrRAMFile)
	}
	return nil
}

// createRAM makes a new RAM file and records its identity before QEMU
// ever sees it.
func (vm *VM) createRAM(dir *os.File, path string) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), filepath.Base(path),
		unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, ramFileMode)
	if err != nil {
		return nil, fmt.Errorf("vm %q: create guest RAM file %s: %v: %w", vm.name, path, err, ErrRAMFile)
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
		return nil, fmt.Errorf("vm %q: guest RAM file %s: %w", vm.name, path, err)
	}
	id := identityOf(path, &st)
	vm.mu.Lock()
	vm.rt.RAM = &id
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.log.Debug("guest RAM file created", "file", path, "inode", st.Ino)
	return f, nil
}

// ramRoom says why a new RAM file of this size would not fit: a tmpfs or
// a hugetlbfs out of room kills QEMU with SIGBUS at the first touch.
func (h *Host) ramRoom(spec Spec) error {
	if spec.HugePages {
		return h.hugePagesFor(spec.Memory)
	}
	if !h.shmFree(spec.Memory) {
		return fmt.Errorf("%s has no room for %d MiB of shared guest RAM (see stale files in hostd's status)", shmDir, spec.Memory)
	}
	return nil
}

// ramReplaced says how the file at the VM's RAM path is not the one hostd
// created ("" when it is, or when hostd created none).
func (vm *VM) ramReplaced() string {
	vm.mu.Lock()
	want := vm.rt.RAM
	vm.mu.Unlock()
	if want == nil {
		return ""
	}
	var st unix.Stat_t
	if err := unix.Lstat(want.Path, &st); err != nil {
		return fmt.Sprintf("guest RAM file %s: %v", want.Path, err)
	}
	if d := want.differs(want.Path, &st); d != "" {
		return fmt.Sprintf("guest RAM file %s was replaced (%s)", want.Path, d)
	}
	return ""
}

// removeRAM deletes the VM's RAM file once no QEMU uses it, and only the
// file hostd created: another one at the path stays for the operator (and
// the record with it, so it is never taken for the VM's).
func (vm *VM) removeRAM() {
	vm.mu.Lock()
	want := vm.rt.RAM
	vm.mu.Unlock()
	if want == nil {
		return
	}
	var st unix.Stat_t
	if err := unix.Lstat(want.Path, &st); err == nil {
		if d := want.differs(want.Path, &st); d != "" {
			vm.log.Error("guest RAM file was replaced; left in place", "file", want.Path, "differs", d)
			return
		}
		if err := os.Remove(want.Path); err != nil {
			vm.log.Warn("remove guest RAM file", "file", want.Path, "err", err)
			return
		}
	}
	vm.mu.Lock()
	if vm.rt.RAM == want {
		vm.rt.RAM = nil
		vm.saveRuntime()
	}
	vm.mu.Unlock()
}

// warmRAMUsable says why a new QEMU could not take over the running one's
// RAM file: none recorded (an older hostd's QEMU), replaced at the path,
// or not what the running QEMU maps.
func (vm *VM) warmRAMUsable() error {
	vm.mu.Lock()
	want, pid := vm.rt.RAM, vm.rt.PID
	vm.mu.Unlock()
	if want == nil {
		return fmt.Errorf("vm %q: its qemu was started without a guest RAM file recorded by hostd (an older hostd): use checkpoint and restore: %w", vm.name, ErrRAMFile)
	}
	if d := vm.ramReplaced(); d != "" {
		return fmt.Errorf("vm %q: %s: refused for the new qemu; the VM runs on: %w", vm.name, d, ErrRAMFile)
	}
	if !qemuMaps(pid, *want) {
		return fmt.Errorf("vm %q: the running qemu (pid %d) does not map guest RAM file %s (inode %d): refused: %w", vm.name, pid, want.Path, want.Ino, ErrRAMFile)
	}
	return nil
}

// verifyAdoptRAM checks, before hostd re-adopts a running QEMU, that it
// maps the RAM file hostd created; a file replaced at the path since is
// refused later (warm restart, a start after a crash) and reported now.
func (vm *VM) verifyAdoptRAM(pid int) error {
	vm.mu.Lock()
	want, shared := vm.rt.RAM, vm.spec.UsesSharedMemory()
	vm.mu.Unlock()
	if !shared {
		return nil
	}
	if want == nil {
		vm.log.Warn("qemu was started without a recorded guest RAM file (an older hostd): warm restart is refused; checkpoint and restore it", "pid", pid)
		return nil
	}
	if !qemuMaps(pid, *want) {
		return fmt.Errorf("vm %q: qemu pid %d does not map the guest RAM file hostd created (%s, inode %d): not adopted: %w", vm.name, pid, want.Path, want.Ino, ErrRAMFile)
	}
	if d := vm.ramReplaced(); d != "" {
		vm.log.Error("guest RAM file replaced while the VM ran: the running qemu keeps its own RAM; warm restart and restart refuse the file", "err", d)
	}
	return nil
}

// qemuMaps reports whether process pid has the file id mapped (its
// /proc/PID/maps names the device and inode of every file mapping).
func qemuMaps(pid int, id ramIdentity) bool {
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

// StaleSharedMemory lists shared RAM files of this host that no running VM
// owns (left by a crash). They are reported, not removed: one may hold
// the only copy of a guest's memory.
func (h *Host) StaleSharedMemory() []string {
	var stale []string
	for _, dir := range h.layout().RAMDirs() {
		matches, _ := filepath.Glob(filepath.Join(dir, "*.ram"))
		for _, m := range matches {
			if vm, err := h.Get(strings.TrimSuffix(filepath.Base(m), ".ram")); err == nil && vm.alive() {
				continue
			}
			stale = append(stale, m)
		}
	}
	return stale
}

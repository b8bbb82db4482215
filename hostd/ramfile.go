package hostd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// A VM's guest RAM file (hostd/qemu): the VM records the one hostd created
// for it (runtimeState.RAM) and is the only one to use or remove it.

// ramPath is the VM's shared RAM file, in the host's own directory: on
// the hugetlbfs for hugepages, else on /dev/shm.
func (h *Host) ramPath(s Spec) string {
	base := qemu.ShmDir
	if s.HugePages {
		if dir := qemu.HugetlbfsDir(); dir != "" {
			base = dir
		}
	}
	return filepath.Join(h.layout().ramDir(base), s.Name+".ram")
}

// openRAM opens the RAM file for a new QEMU of the VM (nil when its spec
// keeps RAM private), recording one it creates before QEMU sees it.
func (vm *VM) openRAM(s Spec) (f *os.File, created bool, err error) {
	if !s.UsesSharedMemory() {
		return nil, false, nil
	}
	vm.mu.Lock()
	want := vm.rt.RAM
	vm.mu.Unlock()
	f, id, err := qemu.OpenRAM(vm.h.ramPath(s), want, s.Memory, s.HugePages)
	if err != nil {
		return nil, false, fmt.Errorf("vm %q: %w", vm.name, err)
	}
	if id != nil {
		vm.mu.Lock()
		vm.rt.RAM = id
		vm.saveRuntime()
		vm.mu.Unlock()
		vm.log.Debug("guest RAM file created", "file", id.Path, "inode", id.Ino)
	}
	return f, id != nil, nil
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
	return want.Replaced()
}

// removeRAM deletes the VM's RAM file, once no QEMU of the VM needs it.
// Another file at the path stays for the operator, and the record with
// it, so that it is never taken for the VM's.
func (vm *VM) removeRAM() {
	vm.mu.Lock()
	want := vm.rt.RAM
	vm.mu.Unlock()
	if want == nil {
		return
	}
	if err := want.Remove(); err != nil {
		vm.log.Error("guest RAM file not removed", "err", err)
		return
	}
	vm.log.Info("guest RAM file removed", "file", want.Path)
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
	if d := want.Replaced(); d != "" {
		return fmt.Errorf("vm %q: %s: refused for the new qemu; the VM runs on: %w", vm.name, d, ErrRAMFile)
	}
	if !want.MappedBy(pid) {
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
	switch {
	case !shared:
	case want == nil:
		vm.log.Warn("qemu was started without a recorded guest RAM file (an older hostd): warm restart is refused; checkpoint and restore it", "pid", pid)
	case !want.MappedBy(pid):
		return fmt.Errorf("vm %q: qemu pid %d does not map the guest RAM file hostd created (%s, inode %d): not adopted: %w", vm.name, pid, want.Path, want.Ino, ErrRAMFile)
	default:
		if d := want.Replaced(); d != "" {
			vm.log.Error("guest RAM file replaced while the VM ran: the running qemu keeps its own RAM; warm restart and restart refuse the file", "err", d)
		}
	}
	return nil
}

// ramFiles lists the RAM files in this host's directories, by VM name.
func (h *Host) ramFiles() map[string]string {
	files := map[string]string{}
	for _, dir := range h.layout().RAMDirs() {
		matches, _ := filepath.Glob(filepath.Join(dir, "*.ram"))
		for _, m := range matches {
			files[m] = strings.TrimSuffix(filepath.Base(m), ".ram")
		}
	}
	return files
}

// StaleSharedMemory lists shared RAM files of this host that no running VM
// owns: a file hostd did not create, or could not remove.
func (h *Host) StaleSharedMemory() []string {
	var stale []string
	for path, name := range h.ramFiles() {
		if vm, err := h.Get(name); err == nil && vm.alive() {
			continue
		}
		stale = append(stale, path)
	}
	slices.Sort(stale)
	return stale
}

// reclaimOrphanRAM removes, at start, the RAM files of VMs this host no
// longer has (no state directory): only hostd writes in its RAM
// directories, and a VM's record of its file went with the VM.
func (h *Host) reclaimOrphanRAM() {
	for path, name := range h.ramFiles() {
		if _, err := os.Lstat(h.layout().VM(name)); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := os.Remove(path); err != nil {
			h.log.Warn("stale guest RAM file not removed", "file", path, "err", err)
		} else {
			h.log.Info("guest RAM file of a vm that no longer exists removed", "file", path)
		}
	}
}

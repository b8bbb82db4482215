package hostd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// ramPath is the VM's shared RAM file, in the host's own directory: on
// the hugetlbfs for hugepages, else on its tmpfs (shm_dir).
func (h *Host) ramPath(s Spec) string {
	dir := h.layout().ShmRAMDir()
	if hp := qemu.HugetlbfsDir(); s.HugePages && hp != "" {
		dir = h.layout().ramDir(hp)
	}
	return filepath.Join(dir, s.Name+".ram")
}

// openRAM opens the RAM file for a new QEMU of the VM (nil when its spec
// keeps RAM private), recording one it creates before QEMU sees it; a new
// one comes from the host's pool if pooled allows (not for a template,
// whose holes stay holes).
func (vm *VM) openRAM(s Spec, pooled bool) (f *os.File, created bool, err error) {
	if !s.UsesSharedMemory() {
		return nil, false, nil
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	var pool qemu.Pool
	took := &tookFromPool{ramPool: vm.h.ramPool}
	if pooled && !vm.sparseRAM && vm.h.ramPool != nil {
		pool = took
	}
	start := timeNow()
	f, id, err := qemu.OpenRAM(vm.h.ramPath(s), vm.rt.RAM, s.Memory, s.HugePages, pool)
	if took.ok {
		vm.logPhase("ram_from_pool", timeNow().Sub(start))
	}
	if err != nil {
		return nil, false, fmt.Errorf("vm %q: %w", vm.name, err)
	}
	if id != nil {
		vm.rt.RAM = id
		vm.saveRuntime()
	}
	return f, id != nil, nil
}

// tookFromPool notes whether the pool handed out a file.
type tookFromPool struct {
	*ramPool
	ok bool
}

func (p *tookFromPool) Take(dir *os.File, path string, size int64) (*os.File, *qemu.RAMFile, bool) {
	f, id, ok := p.ramPool.Take(dir, path, size)
	p.ok = ok
	return f, id, ok
}

// openWarmRAM opens the RAM file the VM's running QEMU maps, for the new
// QEMU of a warm restart.
func (vm *VM) openWarmRAM() (*os.File, error) {
	vm.mu.Lock()
	f, err := qemu.OpenWarmRAM(vm.h.ramPath(vm.spec), vm.rt.RAM, vm.rt.PID)
	vm.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", vm.name, err)
	}
	return f, nil
}

// sharedRAM opens the RAM file of the VM's running QEMU when hostd saves
// and restores it itself (snapshot.SaveShared): a file on /dev/shm (a
// hugetlbfs file takes no write(2); QEMU copies those); nil if none.
func (vm *VM) sharedRAM() (*os.File, error) {
	vm.mu.Lock()
	s, rec := vm.spec, vm.rt.RAM
	vm.mu.Unlock()
	if !s.UsesSharedMemory() || s.HugePages || rec == nil {
		return nil, nil
	}
	return vm.openWarmRAM()
}

// removeRAM deletes the VM's RAM file, once no QEMU of the VM needs it,
// or gives it to the host's pool. Another file at the path stays for the
// operator, and the record with it, so that it is never taken for the
// VM's.
func (vm *VM) removeRAM() {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.rt.RAM == nil {
		return
	}
	if !vm.sparseRAM && vm.h.ramPool.put(*vm.rt.RAM) {
		vm.log.Info("guest RAM file pooled", "file", vm.rt.RAM.Path)
		vm.rt.RAM = nil
		vm.saveRuntime()
		return
	}
	if err := vm.rt.RAM.Remove(); err != nil {
		vm.log.Error("guest RAM file not removed", "err", err)
		return
	}
	vm.log.Info("guest RAM file removed", "file", vm.rt.RAM.Path)
	vm.rt.RAM = nil
	vm.saveRuntime()
}

// StaleSharedMemory lists shared RAM files of this host that no running VM
// owns: one hostd did not create, or could not remove.
func (h *Host) StaleSharedMemory() (stale []string) {
	for _, dir := range h.layout().RAMDirs() {
		matches, _ := filepath.Glob(filepath.Join(dir, "*.ram"))
		for _, m := range matches {
			if vm, err := h.Get(strings.TrimSuffix(filepath.Base(m), ".ram")); err != nil || !vm.alive() {
				stale = append(stale, m)
			}
		}
	}
	return stale
}

// reclaimOrphanRAM removes, at start, the RAM files of VMs this host no
// longer has (no state directory): the record of a file went with its VM.
func (h *Host) reclaimOrphanRAM() {
	gone := func(name string) bool {
		_, err := os.Lstat(h.layout().VM(name))
		return errors.Is(err, fs.ErrNotExist)
	}
	for _, dir := range h.layout().RAMDirs() {
		if removed, err := qemu.RemoveRAMFiles(dir, gone); len(removed) > 0 || err != nil {
			h.log.Info("guest RAM files of vms that no longer exist", "removed", removed, "err", err)
		}
	}
}

// holdRAM opens the VM's shared RAM file for a kill that removes it, so
// that its removal does not free the guest's pages (a tenth of a second
// a GiB of tmpfs) while the operation waits: releaseRAM frees them after.
// nil when there is no such file (releaseRAM takes nil).
func (vm *VM) holdRAM() *os.File {
	f, err := vm.sharedRAM()
	if err != nil {
		return nil
	}
	return f
}

// releaseRAM closes a file holdRAM opened, in the background: the last
// reference to a removed file frees its pages.
func releaseRAM(f *os.File) {
	if f != nil {
		go qemu.CloseLowest(f)
	}
}

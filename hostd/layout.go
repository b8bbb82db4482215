package hostd

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// Layout is where the hostd of one state directory keeps its files: the
// API socket, a directory per VM, and guest RAM files outside the state
// directory. Tools and tests read it here rather than re-deriving it.
type Layout struct {
	StateDir string
	// ShmDir is the tmpfs of guest RAM files (config shm_dir); empty:
	// qemu.DefaultShmDir.
	ShmDir string
}

// Files of a VM's directory.
const (
	fileSpec    = "spec.json"
	fileRuntime = "runtime.json"
	fileSerial  = qemu.SerialLog
	fileQEMULog = qemu.Log
)

func (h *Host) layout() Layout { return Layout{StateDir: h.cfg.StateDir, ShmDir: h.cfg.ShmDir} }

// Socket is the API's unix socket (unless --socket says otherwise).
func (l Layout) Socket() string { return filepath.Join(l.StateDir, "hostd.sock") }

// VMs holds one directory per VM.
func (l Layout) VMs() string { return filepath.Join(l.StateDir, "vms") }

// VM is a VM's directory: its spec, runtime state, sockets and logs.
func (l Layout) VM(name string) string { return filepath.Join(l.VMs(), name) }

// SerialLog is a VM's console output.
func (l Layout) SerialLog(vm string) string { return filepath.Join(l.VM(vm), fileSerial) }

// QEMULog is what a VM's QEMU printed.
func (l Layout) QEMULog(vm string) string { return filepath.Join(l.VM(vm), fileQEMULog) }

// RAMDirs lists the directories where this hostd keeps guest RAM files:
// on its tmpfs (ShmRAMDir) and on the hugetlbfs, if one is mounted.
func (l Layout) RAMDirs() []string {
	dirs := []string{l.ShmRAMDir()}
	if hp := qemu.HugetlbfsDir(); hp != "" {
		dirs = append(dirs, l.ramDir(hp))
	}
	return dirs
}

// ShmRAMDir is this hostd's RAM directory on its tmpfs (ShmDir).
func (l Layout) ShmRAMDir() string { return l.ramDir(l.shm()) }

// shm is the tmpfs of guest RAM files.
func (l Layout) shm() string {
	if l.ShmDir == "" {
		return qemu.DefaultShmDir
	}
	return l.ShmDir
}

// ramDir is this hostd's RAM directory on the file system at base, named
// by a short hash of the state dir so two hostds on one machine (tests, a
// migration between them) never share one.
func (l Layout) ramDir(base string) string {
	sum := sha256.Sum256([]byte(l.StateDir))
	return filepath.Join(base, "symvirt-"+hex.EncodeToString(sum[:4]))
}

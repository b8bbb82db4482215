package hostd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/atomicfile"
)

// A clone's QEMU is started for one thing: to load a booted template's
// state. What QEMU keeps only to boot a guest is memory each clone would
// hold on its own, one copy per clone, since QEMU reads it into its heap:
//
//   - -kernel and -initrd: QEMU keeps both images in fw_cfg (the test
//     guest's: 23 MiB of files, 13.5 MiB of PSS per clone) for the option
//     ROM to copy into guest RAM at boot. A clone does not boot; it gets a
//     placeholder kernel of 1.5 KiB instead, a valid Linux boot header so
//     that QEMU still adds the same option ROM (linuxboot_dma.bin, a RAM
//     block of the template's state, which must exist to load) and no
//     initrd or command line. The clone's spec keeps the real kernel: a
//     clone that later moves or restarts its QEMU gets it back.
//
// (glibc's malloc tunables, MALLOC_ARENA_MAX=1 and a fixed
// MALLOC_MMAP_THRESHOLD_, were measured too and saved nothing: the vCPU
// thread's arena's allocations move into the main heap; docs/templates.md.)
//
// A clone whose guest reboots runs the placeholder: it powers the machine
// off (ACPI S5 through the PM1a control port SeaBIOS sets on q35) rather
// than boot a kernel the QEMU does not have; hostd then boots the VM again
// from its spec (template_reboot.go).

// placeholderKernelName is the placeholder's file in the templates
// directory (a name no template can take: template names start with a
// letter or digit).
const placeholderKernelName = ".clone-kernel"

// placeholderKernel is a Linux boot image (boot protocol 2.06, one setup
// sector, a loaded-high kernel of one sector) whose real-mode entry powers
// the machine off and halts.
func placeholderKernel() []byte {
	b := make([]byte, 3*512)
	b[0x1f1] = 1                                     // setup_sects
	binary.LittleEndian.PutUint16(b[0x1fe:], 0xaa55) // boot_flag
	copy(b[0x200:], []byte{0xeb, 0x280 - 0x202})     // jmp to the code below
	copy(b[0x202:], "HdrS")                          // header magic
	binary.LittleEndian.PutUint16(b[0x206:], 0x0206) // boot protocol
	b[0x211] = 0x01                                  // loadflags: LOADED_HIGH
	binary.LittleEndian.PutUint32(b[0x238:], 2047)   // cmdline_size
	copy(b[0x280:], []byte{
		0xba, 0x04, 0x06, // mov dx, 0x604: PM1a_CNT (PM base 0x600)
		0xb8, 0x00, 0x20, // mov ax, 0x2000: SLP_EN, SLP_TYP 0 (S5)
		0xef,       // out dx, ax
		0xfa,       // cli
		0xf4,       // hlt
		0xeb, 0xfd, // jmp back to hlt
	})
	return b
}

// placeholderKernelPath writes the placeholder (once) and returns its
// path. QEMU reads -kernel before it drops to its user.
func (h *Host) placeholderKernelPath() (string, error) {
	path := filepath.Join(h.templatesDir(), placeholderKernelName)
	want := placeholderKernel()
	if have, err := os.ReadFile(path); err == nil && bytes.Equal(have, want) {
		return path, nil
	}
	if err := mkdirAll(h.templatesDir(), 0o700); err != nil {
		return "", err
	}
	if err := atomicfile.WriteFile(path, want, 0o644); err != nil {
		return "", fmt.Errorf("placeholder kernel: %w", err)
	}
	return path, nil
}

// leanClone makes a's QEMU a clone's: the template's RAM private, TCG's
// translation buffer bounded, the placeholder kernel for a template that
// booted a kernel.
func (h *Host) leanClone(a *qemu.Args) error {
	a.PrivateRAM, a.Accel = true, cloneAccel(a.Accel)
	if a.Spec.Kernel == "" {
		return nil
	}
	k, err := h.placeholderKernelPath()
	if err != nil {
		return err
	}
	a.Spec.Kernel, a.Spec.Initrd, a.Spec.Append = k, "", ""
	return nil
}

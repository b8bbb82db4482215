// Package testguest gives integration tests the symvirt test guest: a Debian
// cloud kernel and a busybox initramfs built by scripts/mkguest ("make
// guest") into build/guest/.
//
// Paths finds the kernel and initrd, skipping the test when they (or Qemu:
// $SYMVIRT_QEMU, else qemu-system-x86_64) are missing, or failing it when SYMVIRT_REQUIRE_QEMU=1.
// Initrd returns a copy of the initrd with extra files appended as a second
// cpio archive, which the kernel unpacks over the first; tests use it to add
// scripts to /etc/symvirt/rc.d/, which the guest's /init runs in order before
// printing "symvirt-guest-ready" on the console.
//
// The guest's kernel command line options (symvirt.name=, symvirt.counter=1,
// symvirt.ip=, symvirt.gw=, symvirt.bond=1, symvirt.agent=1) are described in
// scripts/guest/init.
package testguest

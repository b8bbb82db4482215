package qemu

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/symvirt/symvirt/hostd/devices"
	"github.com/symvirt/symvirt/hostd/spec"
)

// Files a QEMU writes in its VM's directory: the guest's console and what
// QEMU printed.
const (
	SerialLog = "serial.log"
	Log       = "qemu.log"
)

// Args say how to start one QEMU of a VM.
type Args struct {
	Spec  spec.Spec
	Dir   string // the VM's directory: sockets, pid file, logs
	Accel string
	// Gen numbers the VM's QEMUs and names their sockets, so a warm
	// restart can run two side by side.
	Gen      int
	Incoming bool // -incoming defer
	// Absent passthrough devices are left out, their root ports kept: so
	// both sides of a transfer agree on the device set while they are
	// unplugged.
	Absent   map[string]bool
	Override map[string]map[string]string // pool properties, by device
	RunAs    string                       // the user QEMU drops to ("": root)
	// PrivateRAM maps the RAM file (a template's) private copy-on-write
	// (share=off): the guest's writes never reach the file.
	PrivateRAM bool
	// NamedRAM puts guest RAM that is no file in a backend named ram0
	// too, as a file's is: a template clone's state (the template's RAM
	// was a file) names its RAM block so, and a QEMU that loads it, a
	// migration's destination or a restore, must have that block.
	NamedRAM bool
	// runWith: the binary takes -run-with user= for -runas (Start).
	runWith bool
}

// QMPSocket is the monitor socket of a VM's QEMU of generation gen.
func QMPSocket(dir string, gen int) string { return filepath.Join(dir, genName("qmp", gen, "sock")) }

// GuestSocket is the guest channel's socket (virtio-serial) likewise.
func GuestSocket(dir string, gen int) string {
	return filepath.Join(dir, genName("guest", gen, "sock"))
}

// genName is a per-generation file name: qmp.sock, qmp.1.sock, ...
func genName(base string, gen int, ext string) string {
	if gen == 0 {
		return base + "." + ext
	}
	return fmt.Sprintf("%s.%d.%s", base, gen, ext)
}

// argv is QEMU's command line (without the binary); values with commas are
// escaped (QEMU reads ',,' as ',').
func (a Args) argv() []string {
	s := a.Spec
	v := []string{
		"-name", "guest=" + esc(s.Name) + ",debug-threads=on",
		"-machine", "q35", "-accel", a.Accel,
		"-m", fmt.Sprintf("%dM", s.Memory), "-smp", fmt.Sprint(s.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-chardev", "file,id=serial0,append=on,path=" + esc(filepath.Join(a.Dir, SerialLog)),
		"-serial", "chardev:serial0",
		"-qmp", "unix:" + esc(QMPSocket(a.Dir, a.Gen)) + ",server=on,wait=off",
		"-pidfile", filepath.Join(a.Dir, genName("qemu", a.Gen, "pid")),
	}
	if s.CPU != "" {
		v = append(v, "-cpu", s.CPU)
	}
	if a.ramFile() {
		share := map[bool]string{false: "on", true: "off"}[a.PrivateRAM]
		v = append(v, "-object", fmt.Sprintf("memory-backend-file,id=ram0,share=%s,size=%dM,mem-path=/proc/self/fd/%d", share, s.Memory, ramFD),
			"-machine", "memory-backend=ram0")
	} else if a.NamedRAM {
		v = append(v, "-object", fmt.Sprintf("memory-backend-ram,id=ram0,size=%dM", s.Memory), "-machine", "memory-backend=ram0")
	}
	if s.Kernel != "" {
		v = append(v, "-kernel", s.Kernel)
		if s.Initrd != "" {
			v = append(v, "-initrd", s.Initrd)
		}
		if s.Append != "" {
			v = append(v, "-append", s.Append)
		}
	}
	for _, d := range s.Disks {
		v = append(v,
			"-blockdev", fmt.Sprintf("driver=file,node-name=f-%s,filename=%s", d.ID, esc(d.Path)),
			"-blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=f-%s", d.Format, d.ID, d.ID),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=%s,id=dev-%s", d.ID, d.ID))
	}
	v = append(append(v, a.deviceArgs()...), a.guestChannelArgs()...)
	if a.Incoming {
		v = append(v, "-incoming", "defer")
	}
	return append(v, confineArgs(a.RunAs, a.runWith)...)
}

// ramFile: guest RAM is a file hostd hands QEMU.
func (a Args) ramFile() bool { return a.Spec.UsesSharedMemory() || a.PrivateRAM }

// deviceArgs: the NICs and other devices, each passthrough one on a
// root port of its own.
func (a Args) deviceArgs() []string {
	var v []string
	chassis := 0
	device := func(d devices.Device, passthrough bool) {
		if passthrough {
			chassis++
			d.Props["bus"] = devices.RootPort(d.ID)
			v = append(v, "-device", fmt.Sprintf("pcie-root-port,id=%s,chassis=%d,slot=%d,bus=pcie.0", d.Props["bus"], chassis, chassis))
			if a.Absent[d.ID] {
				return
			}
		}
		v = append(v, "-device", deviceArg(d))
	}
	for _, n := range a.Spec.NICs {
		v = append(v, "-netdev", netdevArg(n))
		device(devices.NIC(n, a.Override[n.ID]), n.Passthrough)
	}
	for _, d := range a.Spec.Devs {
		device(devices.Generic(d, a.Override[d.ID]), d.Passthrough)
	}
	return v
}

func netdevArg(n spec.NIC) string {
	if n.Backend == "tap" {
		return fmt.Sprintf("tap,id=nd-%s,ifname=%s,script=no,downscript=no", n.ID, esc(n.Tap))
	}
	v := "user,id=nd-" + n.ID
	for _, f := range n.HostFwd {
		v += ",hostfwd=" + esc(f)
	}
	return v
}

func (a Args) guestChannelArgs() []string {
	switch a.Spec.Guest.Type {
	case "virtio-serial":
		return []string{
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", "socket,id=guestch,server=on,wait=off,path=" + esc(GuestSocket(a.Dir, a.Gen)),
			"-device", "virtserialport,bus=vser0.0,chardev=guestch,name=org.symvirt.0"}
	case "vsock":
		return []string{"-device", fmt.Sprintf("vhost-vsock-pci,id=vsock0,guest-cid=%d", a.Spec.Guest.CID)}
	}
	return nil
}

// sandboxDeny is QEMU's seccomp filter: no obsolete system calls, no
// set*uid, no fork/exec (so an exec: migration URI runs nothing either), no
// scheduler or priority changes. Every file and socket hostd hands QEMU is
// opened at start or passed as a descriptor, which the filter allows.
const sandboxDeny = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// confineArgs returns the seccomp sandbox and, for a user, -runas (or, for
// a QEMU that has it, runWith, -run-with user=: 9.1 deprecated -runas and
// 10.0 removed it). QEMU 7.2 installs the filter before -runas's setuid,
// so elevateprivileges=deny kills it with SIGSYS (measured): with a user,
// that sub-option stays at allow; with every uid dropped and spawn denied
// QEMU cannot regain root.
func confineArgs(user string, runWith bool) []string {
	if user == "" {
		return []string{"-sandbox", sandboxDeny}
	}
	v := []string{"-sandbox", strings.Replace(sandboxDeny, ",elevateprivileges=deny", "", 1)}
	if runWith {
		return append(v, "-run-with", "user="+esc(user))
	}
	return append(v, "-runas", user)
}

func deviceArg(d devices.Device) string {
	var b strings.Builder
	b.WriteString(esc(d.Driver) + ",id=" + d.ID)
	keys := make([]string, 0, len(d.Props))
	for k := range d.Props {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString("," + k + "=" + esc(d.Props[k]))
	}
	return b.String()
}

func esc(v string) string { return strings.ReplaceAll(v, ",", ",,") }

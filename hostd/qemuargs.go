package hostd

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// launch says how to start QEMU for a VM.
type launch struct {
	spec     Spec
	dir      string
	accel    string
	incoming bool
	// absent lists passthrough devices left out of the command line: they
	// were detached at the source of a migration or checkpoint and are
	// hot-plugged after the state is loaded, so both sides agree on the
	// device set when the state is transferred.
	absent map[string]bool
	// override replaces properties of passthrough devices (from a pool).
	override map[string]map[string]string
	// shm is QEMU's mem-path for shared memory: the RAM file hostd opened
	// and passes as descriptor ramFD.
	shm string
	// warm: the RAM file must be in place, the running QEMU's (a warm
	// restart), never a new one.
	warm bool
	// gen names the sockets and pid file of this QEMU (genName).
	gen int
	// runAs is the user QEMU drops to after opening its files ("": root).
	runAs string
}

// qemuArgs builds QEMU's argv (without the binary). No shell is involved,
// so nothing in a spec can inject arguments: values with commas are
// rejected or escaped (QEMU escapes ',' as ',,').
func qemuArgs(l launch) ([]string, error) {
	s := l.spec
	a := []string{
		"-name", "guest=" + esc(s.Name) + ",debug-threads=on",
		"-machine", "q35",
		"-accel", l.accel,
		"-m", fmt.Sprintf("%dM", s.Memory),
		"-smp", fmt.Sprint(s.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-chardev", "file,id=serial0,append=on,path=" + esc(filepath.Join(l.dir, fileSerial)),
		"-serial", "chardev:serial0",
		"-qmp", "unix:" + esc(filepath.Join(l.dir, genName(fileQMP, l.gen))) + ",server=on,wait=off",
		"-pidfile", filepath.Join(l.dir, genName(filePID, l.gen)),
	}
	if s.CPU != "" {
		a = append(a, "-cpu", s.CPU)
	}
	if s.UsesSharedMemory() {
		if l.shm == "" {
			return nil, fmt.Errorf("vm %q: shared memory without a file", s.Name)
		}
		a = append(a,
			"-object", "memory-backend-file,id=ram0,share=on,size="+fmt.Sprintf("%dM", s.Memory)+",mem-path="+esc(l.shm),
			"-machine", "memory-backend=ram0")
	}
	if s.Kernel != "" {
		a = append(a, "-kernel", s.Kernel)
		if s.Initrd != "" {
			a = append(a, "-initrd", s.Initrd)
		}
		if s.Append != "" {
			a = append(a, "-append", s.Append)
		}
	}
	for _, d := range s.Disks {
		a = append(a,
			"-blockdev", fmt.Sprintf("driver=file,node-name=f-%s,filename=%s", d.ID, esc(d.Path)),
			"-blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=f-%s", d.Format, d.ID, d.ID),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=%s,id=dev-%s", d.ID, d.ID))
	}
	a = append(a, l.deviceArgs()...)
	a = append(a, l.guestChannelArgs()...)
	if l.incoming {
		a = append(a, "-incoming", "defer")
	}
	return append(a, confineArgs(l.runAs)...), nil
}

// deviceArgs: the NICs and other devices, each passthrough one on a
// pcie-root-port of its own so it can be hot-unplugged; one detached at a
// migration's or checkpoint's source keeps its port but is left out.
func (l launch) deviceArgs() []string {
	var a []string
	chassis := 0
	rootPort := func(id string) string {
		chassis++
		a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=rp-%s,chassis=%d,slot=%d,bus=pcie.0", id, chassis, chassis))
		return "rp-" + id
	}
	for _, n := range l.spec.NICs {
		nd := "nd-" + n.ID
		switch n.Backend {
		case "tap":
			a = append(a, "-netdev", fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no", nd, esc(n.Tap)))
		default:
			v := "user,id=" + nd
			for _, f := range n.HostFwd {
				v += ",hostfwd=" + esc(f)
			}
			a = append(a, "-netdev", v)
		}
		if n.Passthrough {
			bus := rootPort(n.ID)
			if l.absent[n.ID] {
				continue
			}
			a = append(a, "-device", deviceArg(nicDevice(n, bus, l.override[n.ID])))
			continue
		}
		a = append(a, "-device", deviceArg(nicDevice(n, "", nil)))
	}
	for _, d := range l.spec.Devs {
		bus := ""
		if d.Passthrough {
			bus = rootPort(d.ID)
			if l.absent[d.ID] {
				continue
			}
		}
		a = append(a, "-device", deviceArg(genericDevice(d, bus, l.override[d.ID])))
	}
	return a
}

// guestChannelArgs: the device guestd talks to hostd on.
func (l launch) guestChannelArgs() []string {
	switch l.spec.Guest.Type {
	case "virtio-serial":
		return []string{
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", "socket,id=guestch,server=on,wait=off,path=" + esc(filepath.Join(l.dir, genName(fileGuest, l.gen))),
			"-device", "virtserialport,bus=vser0.0,chardev=guestch,name=org.symvirt.0"}
	case "vsock":
		return []string{"-device", fmt.Sprintf("vhost-vsock-pci,id=vsock0,guest-cid=%d", l.spec.Guest.CID)}
	}
	return nil
}

// sandboxDeny is QEMU's seccomp filter: no obsolete system calls, no
// set*uid, no fork/exec (so an exec: migration URI runs nothing either), no
// scheduler or priority changes. Every file and socket hostd hands QEMU is
// opened at start or passed as a descriptor, which the filter allows.
const sandboxDeny = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// confineArgs returns the seccomp sandbox and, for a user, -runas. QEMU 7.2
// installs the filter before -runas's setuid, so elevateprivileges=deny
// kills it with SIGSYS (measured): with a user, that sub-option stays at
// allow; with every uid dropped and spawn denied QEMU cannot regain root.
func confineArgs(user string) []string {
	if user == "" {
		return []string{"-sandbox", sandboxDeny}
	}
	return []string{"-sandbox", strings.Replace(sandboxDeny, ",elevateprivileges=deny", "", 1), "-runas", user}
}

// device is a QEMU device: driver, id and properties.
type device struct {
	Driver string
	ID     string
	Props  map[string]string
}

func nicDevice(n NIC, bus string, override map[string]string) device {
	p := map[string]string{"netdev": "nd-" + n.ID}
	if n.MAC != "" {
		p["mac"] = n.MAC
	}
	if bus != "" {
		p["bus"] = bus
	}
	for k, v := range override {
		p[k] = v
	}
	return device{Driver: n.Model, ID: n.ID, Props: p}
}

func genericDevice(d Dev, bus string, override map[string]string) device {
	p := map[string]string{}
	for k, v := range d.Props {
		p[k] = v
	}
	if bus != "" {
		p["bus"] = bus
	}
	for k, v := range override {
		p[k] = v
	}
	return device{Driver: d.Driver, ID: d.ID, Props: p}
}

func deviceArg(d device) string {
	var b strings.Builder
	b.WriteString(esc(d.Driver))
	b.WriteString(",id=" + d.ID)
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

// esc escapes a value for QEMU's option syntax, where ',' separates keys.
func esc(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// shmDir is where shared guest RAM lives: a tmpfs that outlives QEMU.
var shmDir = "/dev/shm"

// ramPath is the VM's shared RAM file, in the host's own directory (see
// ramfile.go): on the hugetlbfs for hugepages, else on /dev/shm. The
// host's tag is in the directory's name so two hostds on one machine
// (tests, a migration between them) never share a file.
func (h *Host) ramPath(s Spec) string {
	base := shmDir
	if s.HugePages {
		if dir := hugetlbfsDir(); dir != "" {
			base = dir
		}
	}
	return filepath.Join(h.layout().ramDir(base), s.Name+".ram")
}

// hugetlbfsDir is the first hugetlbfs of 2 MiB pages mounted here, or "".
func hugetlbfsDir() string {
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

// hugePagesFor checks that the VM's RAM fits in the free huge pages (a
// hugetlbfs out of pages kills QEMU with SIGBUS at the first touch).
func (h *Host) hugePagesFor(mem Size) error {
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

// findDevice returns the spec's definition of passthrough device id.
func findDevice(s *Spec, id string, override map[string]string) (device, bool) {
	for _, n := range s.NICs {
		if n.ID == id {
			return nicDevice(n, "rp-"+n.ID, override), n.Passthrough
		}
	}
	for _, d := range s.Devs {
		if d.ID == id {
			return genericDevice(d, "rp-"+d.ID, override), d.Passthrough
		}
	}
	return device{}, false
}

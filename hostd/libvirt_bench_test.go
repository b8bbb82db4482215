package hostd_test

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

// libvirtHost is a libvirtd of its own standing for one host: in a network
// namespace (the host's address), a mount namespace in which its state,
// configuration, log and image directories (/run/libvirt, /etc/libvirt,
// /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt) are directories
// of the test's, and a UTS namespace with a host name of its own (libvirt
// refuses to migrate to a host of the same name or UUID). Its QEMUs
// inherit the mount namespace: a path under /var/lib/libvirt in a domain's
// XML is a different file on each host, so the two hosts share no disk
// directory. virsh reaches it through its socket, from outside.
type libvirtHost struct {
	dir string // its directories: run, etc, lib, log, cache
	ns  *testenv.NetNS
}

// requireLibvirt skips the test unless libvirt is installed as
// scripts/deps libvirt installs it.
func requireLibvirt(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"libvirtd", "virtlogd", "virsh"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("libvirt not installed (%s: %v): run scripts/deps libvirt", bin, err)
		}
	}
	if _, err := user.Lookup("libvirt-qemu"); err != nil {
		t.Skipf("libvirt not installed (no libvirt-qemu user: %v): run scripts/deps libvirt", err)
	}
}

// libvirtConf and qemuConf configure each instance: no authentication on
// its socket (root only), its own host UUID; QEMU run as root without
// libvirt's confinement, ownership changes, cgroups or private /dev (none
// of which this host offers a container), as hostd runs it in these tests.
const (
	libvirtConf = `host_uuid = "%s"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
log_outputs = "3:file:%s"
`
	qemuConf = `user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
`
)

// startLibvirtHost starts virtlogd and libvirtd for host n (1, 2, ...) in ns.
func startLibvirtHost(t *testing.T, ns *testenv.NetNS, n int) *libvirtHost {
	t.Helper()
	h := &libvirtHost{dir: t.TempDir(), ns: ns}
	for _, d := range []string{"run", "lib/images", "log/qemu", "cache"} {
		if err := os.MkdirAll(h.path(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Run(t, "cp", "-a", "/etc/libvirt/.", h.path("etc"))
	os.RemoveAll(h.path("etc/qemu/networks/autostart")) // no default network (virbr0)
	write := func(name, data string) {
		if err := os.WriteFile(h.path(name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/libvirtd.conf", fmt.Sprintf(libvirtConf, fmt.Sprintf("5ca1ab1e-0000-4000-8000-%012d", n), h.path("libvirtd.log")))
	write("etc/qemu.conf", qemuConf)
	for _, d := range []string{"/run/libvirt", "/var/cache/libvirt", "/var/log/libvirt"} {
		if err := os.MkdirAll(d, 0o755); err != nil { // the mount points
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf(`hostname lvhost%d
mount --bind %[2]s/run /run/libvirt
mount --bind %[2]s/etc /etc/libvirt
mount --bind %[2]s/lib /var/lib/libvirt
mount --bind %[2]s/log /var/log/libvirt
mount --bind %[2]s/cache /var/cache/libvirt
virtlogd -d -p %[2]s/virtlogd.pid
exec libvirtd -p %[2]s/libvirtd.pid`, n, h.dir)
	// libvirtd stays the test's child (reaped at the end); virtlogd, which
	// it reaches through its socket, goes to the background.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "unshare", "-m", "-u", "--propagation", "private", "sh", "-ec", script)
	out, err := os.Create(h.path("daemon.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.stop(); cmd.Process.Kill(); cmd.Wait() })
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := h.virsh("version"); err == nil {
			return h
		} else if time.Now().After(end) {
			out, _ := os.ReadFile(h.path("daemon.out"))
			log, _ := os.ReadFile(h.path("libvirtd.log"))
			t.Fatalf("libvirtd %d does not answer: %v\n%s\n%s", n, err, out, log)
		}
	}
}

func (h *libvirtHost) path(rel string) string { return filepath.Join(h.dir, rel) }

// uri is the instance's connection URI, for virsh outside its namespaces.
func (h *libvirtHost) uri() string { return "qemu:///system?socket=" + h.path("run/libvirt-sock") }

func (h *libvirtHost) virsh(args ...string) (string, error) {
	out, err := exec.Command("virsh", append([]string{"-q", "-c", h.uri()}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// stop destroys the instance's domains, then ends its daemons (their
// QEMUs first: they outlive libvirtd).
func (h *libvirtHost) stop() {
	if out, err := h.virsh("list", "--name"); err == nil {
		for _, name := range strings.Fields(out) {
			h.virsh("destroy", name)
		}
	}
	pids, _ := filepath.Glob(h.path("run/qemu/*.pid"))
	for _, f := range append(pids, h.path("libvirtd.pid"), h.path("virtlogd.pid")) {
		if data, err := os.ReadFile(f); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// libvirtDomainXML is the pattern guest as a libvirt domain: TCG, q35, the
// same kernel, initrd, command line and memory as symvirt's, its disk and
// serial console under /var/lib/libvirt (the host's own directory).
const libvirtDomainXML = `<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>%s</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/%[1]s.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='/var/lib/libvirt/%[1]s.serial' append='on'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`

// image and serial are where a domain's disk and console are, seen from
// outside the instance's namespaces.
func (h *libvirtHost) image(name string) string  { return h.path("lib/images/" + name + ".qcow2") }
func (h *libvirtHost) serial(name string) string { return h.path("lib/" + name + ".serial") }

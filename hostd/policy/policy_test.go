package policy

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"github.com/symvirt/symvirt/hostd/spec"
)

// policyFixture is an image dir, a disk dir and files in them.
type policyFixture struct {
	images, disks, kernel, disk string
	pol                         Policy
	pools                       map[string][]map[string]string
}

func newPolicyFixture(t *testing.T) policyFixture {
	root := t.TempDir()
	f := policyFixture{images: filepath.Join(root, "images"), disks: filepath.Join(root, "disks")}
	for _, d := range []string{f.images, f.disks} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	f.kernel = writeFile(t, filepath.Join(f.images, "vmlinuz"))
	f.disk = writeFile(t, filepath.Join(f.disks, "vm.raw"))
	f.pol = Policy{ImageDirs: []string{f.images}, DiskDirs: []string{f.disks}}
	if err := f.pol.SetDefaults(root); err != nil {
		t.Fatal(err)
	}
	f.pools = map[string][]map[string]string{"ib": {{"host": "0000:3b:00.1"}}}
	return f
}

func writeFile(t *testing.T, path string) string {
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (f policyFixture) spec() spec.Spec {
	return spec.Spec{Name: "v", Memory: 64, Kernel: f.kernel, Disks: []spec.Disk{{ID: "d0", Path: f.disk, Format: "raw"}}}
}

func TestPolicyAllowsFilesInItsDirectories(t *testing.T) {
	f := newPolicyFixture(t)
	s := f.spec()
	s.Devs = []spec.Dev{{ID: "hca0", Driver: "vfio-pci", Passthrough: true, Pool: "ib", Props: map[string]string{"host": "0000:3b:00.1", "romfile": ""}}}
	s.NICs = []spec.NIC{{ID: "n0", Model: "virtio-net-pci", Backend: "user", HostFwd: []string{"tcp:127.0.0.1:10022-:22"}},
		{ID: "pt0", Model: "vmxnet3", Backend: "tap", Tap: "tap-v", Passthrough: true}}
	if err := f.pol.Check(s, f.pools); err != nil {
		t.Fatalf("an allowed spec is refused: %v", err)
	}
	// A symlink inside an allowed directory to a file inside it is fine.
	link := filepath.Join(f.images, "current")
	os.Symlink("vmlinuz", link)
	s.Kernel = link
	if err := f.pol.Check(s, f.pools); err != nil {
		t.Fatalf("a symlink within the image dir is refused: %v", err)
	}
}

func TestPolicyRefusesHostFilesAndDevices(t *testing.T) {
	f := newPolicyFixture(t)
	escape := filepath.Join(f.images, "escape")
	if err := os.Symlink("/etc/shadow", escape); err != nil {
		t.Fatal(err)
	}
	os.Symlink("/dev/null", filepath.Join(f.disks, "null"))
	os.Mkdir(filepath.Join(f.disks, "dir"), 0o700)
	cases := []struct {
		name   string
		edit   func(*spec.Spec)
		sentry error
		want   string
	}{
		{"initrd /etc/shadow", func(s *spec.Spec) { s.Initrd = "/etc/shadow" }, sentinel.ErrUnauthorized,
			"spec field initrd: /etc/shadow is outside the allowed image directories [" + f.images + "]"},
		{"kernel through ..", func(s *spec.Spec) { s.Kernel = f.images + "/../../../../etc/shadow" }, sentinel.ErrUnauthorized, "spec field kernel:"},
		{"relative disk", func(s *spec.Spec) { s.Disks[0].Path = "../../etc/shadow" }, sentinel.ErrInvalidSpec, "field disks[0].path: ../../etc/shadow is not an absolute path"},
		{"symlink escape", func(s *spec.Spec) { s.Kernel = escape }, sentinel.ErrUnauthorized, "resolves to /etc/shadow) is outside"},
		{"char device as disk", func(s *spec.Spec) { s.Disks[0].Path = "/dev/null" }, sentinel.ErrUnauthorized, "field disks[0].path: /dev/null is outside the allowed disk directories"},
		{"char device linked into disk dir", func(s *spec.Spec) { s.Disks[0].Path = filepath.Join(f.disks, "null") }, sentinel.ErrUnauthorized, "outside"},
		{"directory as disk", func(s *spec.Spec) { s.Disks[0].Path = filepath.Join(f.disks, "dir") }, sentinel.ErrUnauthorized, "is a directory, not a regular file"},
		{"missing kernel", func(s *spec.Spec) { s.Kernel = filepath.Join(f.images, "nope") }, sentinel.ErrInvalidSpec, "no such file"},
		{"disk in image dir", func(s *spec.Spec) { s.Disks[0].Path = f.kernel }, sentinel.ErrUnauthorized, "allowed disk directories"},
		{"vfio-pci outside a pool", func(s *spec.Spec) {
			s.Devs = []spec.Dev{{ID: "h", Driver: "vfio-pci", Passthrough: true, Props: map[string]string{"host": "0000:00:1f.2"}}}
		}, sentinel.ErrUnauthorized, "field devices[0].driver: vfio-pci attaches host hardware"},
		{"vfio-pci host not in pool", func(s *spec.Spec) {
			s.Devs = []spec.Dev{{ID: "h", Driver: "vfio-pci", Passthrough: true, Pool: "ib", Props: map[string]string{"host": "0000:00:1f.2"}}}
		}, sentinel.ErrUnauthorized, `field devices[0].props.host: 0000:00:1f.2 is not an entry of pool "ib"`},
		{"sysfsdev on an emulated device", func(s *spec.Spec) {
			s.Devs = []spec.Dev{{ID: "h", Driver: "e1000", Props: map[string]string{"sysfsdev": "/sys/bus/pci/devices/0000:00:1f.2"}}}
		}, sentinel.ErrUnauthorized, "field devices[0].props.sysfsdev"},
		{"unknown pool", func(s *spec.Spec) { s.Devs = []spec.Dev{{ID: "h", Driver: "vfio-pci", Passthrough: true, Pool: "gpu"}} }, sentinel.ErrUnauthorized, `pool "gpu" is not configured`},
		{"usb-host spec.NIC model", func(s *spec.Spec) { s.NICs = []spec.NIC{{ID: "n", Model: "usb-host", Backend: "user"}} }, sentinel.ErrUnauthorized, "field nics[0].model"},
		{"romfile", func(s *spec.Spec) {
			s.Devs = []spec.Dev{{ID: "r", Driver: "e1000", Props: map[string]string{"romfile": "/etc/shadow"}}}
		}, sentinel.ErrUnauthorized, "field devices[0].props.romfile"},
		{"loader file", func(s *spec.Spec) {
			s.Devs = []spec.Dev{{ID: "l", Driver: "loader", Props: map[string]string{"file": "/etc/shadow"}}}
		}, sentinel.ErrUnauthorized, "field devices[0].props.file"},
		{"guest channel chardev", func(s *spec.Spec) {
			s.Devs = []spec.Dev{{ID: "c", Driver: "isa-serial", Props: map[string]string{"chardev": "guestch"}}}
		}, sentinel.ErrUnauthorized, "field devices[0].props.chardev"},
		{"hostfwd port 22", func(s *spec.Spec) { s.NICs = []spec.NIC{{ID: "n", Backend: "user", HostFwd: []string{"tcp::22-:22"}}} }, sentinel.ErrUnauthorized, "field nics[0].hostfwd[0]"},
		{"bad tap name", func(s *spec.Spec) { s.NICs = []spec.NIC{{ID: "n", Backend: "tap", Tap: "../eth0"}} }, sentinel.ErrInvalidSpec, "field nics[0].tap"},
	}
	for _, c := range cases {
		s := f.spec()
		c.edit(&s)
		err := f.pol.Check(s, f.pools)
		if !errors.Is(err, c.sentry) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %v naming %q", c.name, err, c.sentry, c.want)
		}
	}
}

func TestPolicyTapNames(t *testing.T) {
	f := newPolicyFixture(t)
	f.pol.TapNames = []string{"tap-*"}
	s := f.spec()
	s.NICs = []spec.NIC{{ID: "n", Backend: "tap", Tap: "tap-v1"}}
	if err := f.pol.Check(s, f.pools); err != nil {
		t.Fatalf("allowed tap: %v", err)
	}
	s.NICs[0].Tap = "vnet-other"
	if err := f.pol.Check(s, f.pools); !errors.Is(err, sentinel.ErrUnauthorized) || !strings.Contains(err.Error(), "field nics[0].tap: vnet-other does not match") {
		t.Fatalf("tap outside the patterns: %v", err)
	}
}

// qemuImg makes a qcow2 image with qemu-img (skipping without it).
func qemuImg(t *testing.T, args ...string) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	if out, err := exec.Command("qemu-img", append([]string{"create", "-f", "qcow2"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

func TestPolicyFollowsQcow2BackingFiles(t *testing.T) {
	f := newPolicyFixture(t)
	base := filepath.Join(f.images, "base.qcow2")
	qemuImg(t, base, "1M")
	good := filepath.Join(f.disks, "good.qcow2")
	qemuImg(t, "-b", base, "-F", "qcow2", good)
	shadow := filepath.Join(f.disks, "shadow.qcow2")
	qemuImg(t, "-u", "-b", "/etc/shadow", "-F", "raw", shadow, "1M")
	rel := filepath.Join(f.disks, "rel.qcow2")
	qemuImg(t, "-u", "-b", "../../../../../../dev/null", "-F", "raw", rel, "1M")
	deep := filepath.Join(f.disks, "deep.qcow2")
	qemuImg(t, "-u", "-b", shadow, "-F", "qcow2", deep, "1M")
	data := filepath.Join(f.disks, "data.qcow2")
	qemuImg(t, "-o", "data_file="+filepath.Join(f.disks, "data.raw"), data, "1M")
	proto := filepath.Join(f.disks, "proto.qcow2")
	qemuImg(t, "-u", "-b", "nbd://10.0.0.9/x", "-F", "raw", proto, "1M")
	for _, c := range []struct {
		path, want string
	}{
		{good, ""},
		{shadow, "(backing file of " + shadow + "): /etc/shadow is outside"},
		{rel, "is outside"},
		{deep, "(backing file of " + shadow + "): /etc/shadow is outside"},
		{data, "external data file"},
		{proto, "protocol names are not allowed"},
	} {
		s := f.spec()
		s.Disks[0] = spec.Disk{ID: "d0", Path: c.path, Format: "qcow2"}
		err := f.pol.Check(s, f.pools)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.path, err)
			}
			continue
		}
		if !errors.Is(err, sentinel.ErrUnauthorized) || !strings.Contains(err.Error(), "field disks[0].path") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want sentinel.ErrUnauthorized naming %q", c.path, err, c.want)
		}
	}
}

func TestPolicyRestoreConfinesDisksToTheCheckpoint(t *testing.T) {
	f := newPolicyFixture(t)
	ckpt := t.TempDir()
	writeFile(t, filepath.Join(ckpt, "disk-d0.raw"))
	os.Symlink("/etc/shadow", filepath.Join(ckpt, "disk-x.raw"))
	rel := filepath.Join(ckpt, "rel.qcow2")
	qemuImg(t, "-u", "-b", "base.qcow2", "-F", "qcow2", rel, "1M")
	for _, c := range []struct{ path, want string }{
		{"disk-d0.raw", ""},
		{"../disk-d0.raw", "is not a file name inside the checkpoint directory"},
		{"/etc/shadow", "is not a file name inside the checkpoint directory"},
		{"disk-x.raw", "resolves to /etc/shadow) is outside the allowed checkpoint directories"},
		{"rel.qcow2", "a relative name is not allowed here"},
	} {
		s := f.spec()
		s.Disks[0] = spec.Disk{ID: "d0", Path: c.path, Format: "raw"}
		if strings.HasSuffix(c.path, ".qcow2") {
			s.Disks[0].Format = "qcow2"
		}
		err := f.pol.CheckRestore(s, ckpt, f.pools)
		if (c.want == "") != (err == nil) || (err != nil && (!errors.Is(err, sentinel.ErrUnauthorized) || !strings.Contains(err.Error(), c.want))) {
			t.Errorf("%s: got %v, want %q", c.path, err, c.want)
		}
	}
	s := f.spec()
	s.Disks = nil
	s.Initrd = "/etc/shadow"
	if err := f.pol.CheckRestore(s, ckpt, f.pools); !errors.Is(err, sentinel.ErrUnauthorized) || !strings.Contains(err.Error(), "spec field initrd") {
		t.Errorf("a manifest's initrd /etc/shadow: %v", err)
	}
}

func TestPolicyQEMUBinary(t *testing.T) {
	dir := t.TempDir()
	p := Policy{QEMUDirs: []string{dir}}
	if err := p.SetDefaults("/s"); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "qemu-new")
	os.WriteFile(good, []byte("#!/bin/sh\n"), 0o755)
	os.Chmod(good, 0o755)
	if err := p.CheckBinary(good, "qemu-system-x86_64"); err != nil {
		t.Errorf("binary in qemu_dirs: %v", err)
	}
	if err := p.CheckBinary("/bin/sh", "/bin/sh"); err != nil {
		t.Errorf("the configured binary: %v", err)
	}
	if err := p.CheckBinary("/bin/sh", "qemu-system-x86_64"); !errors.Is(err, sentinel.ErrUnauthorized) || !strings.Contains(err.Error(), "outside the allowed qemu directories") {
		t.Errorf("/bin/sh as a new qemu: %v", err)
	}
	os.Chmod(good, 0o777)
	if err := p.CheckBinary(good, "qemu-system-x86_64"); !errors.Is(err, sentinel.ErrUnauthorized) || !strings.Contains(err.Error(), "writable only by its owner") {
		t.Errorf("world-writable binary: %v", err)
	}
}

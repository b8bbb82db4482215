package hostd_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// qemuPIDs are the QEMU processes started for a hostd's state dir.
func qemuPIDs(stateDir string) []int {
	var out []int
	for _, pid := range testenv.PIDsUnder(stateDir) {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if strings.HasPrefix(string(comm), "qemu") {
			out = append(out, pid)
		}
	}
	return out
}

// procStatus returns a field of /proc/PID/status ("Seccomp", "Uid").
func procStatus(t *testing.T, pid int, field string) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// assertRefused checks a refusal: the sentinel, the field, and that nothing
// of the VM is left on the host (no VM, no state dir, no QEMU).
func assertRefused(t *testing.T, h *testenv.Hostd, what string, err error, sentinel error, want string) {
	t.Helper()
	if !errors.Is(err, sentinel) || !strings.Contains(err.Error(), want) {
		t.Fatalf("%s: got %v, want %v naming %q", what, err, sentinel, want)
	}
	t.Logf("%s: refused: %v", what, err)
	assertNothingLeft(t, h, what)
}

func assertNothingLeft(t *testing.T, h *testenv.Hostd, what string) {
	t.Helper()
	if vms, err := h.Client().List(context.Background()); err != nil || len(vms) != 0 {
		t.Fatalf("%s: vms left: %+v %v", what, vms, err)
	}
	if entries, _ := os.ReadDir(h.Layout().VMs()); len(entries) != 0 {
		t.Fatalf("%s: state left: %v", what, entries)
	}
	if pids := qemuPIDs(h.StateDir); len(pids) != 0 {
		t.Fatalf("%s: qemu left running: %v", what, pids)
	}
}

// TestSpecPolicyRefusesHostFiles mounts the attacks of a spec through the
// real API: a host secret as initrd, device nodes as disks, a symlink out
// of an allowed directory, a vfio-pci address outside the pools, on
// create, on an incoming migration and on a restore; and shows, as a
// control, that a hostd whose policy allows /etc hands /etc/shadow to QEMU.
func TestSpecPolicyRefusesHostFiles(t *testing.T) {
	testenv.RequireRoot(t)
	kernel, initrd := testguest.Paths(t)
	h := testenv.StartHostd(t, "a", nil, "", "pools:\n  ib:\n    - {host: \"0000:3b:00.1\"}\n")
	c := h.Client()
	ctx := ctxT(t, 3*time.Minute)
	tmp := t.TempDir()
	base := hostd.Spec{Name: "p1", Memory: 128, Kernel: kernel, Initrd: initrd, Append: "console=ttyS0 quiet panic=-1"}
	guestDir := filepath.Dir(kernel)

	// The CLI's user sees the field and the allowed directories.
	bad := filepath.Join(tmp, "shadow.yaml")
	os.WriteFile(bad, []byte("name: p1\nmemory: 128\nkernel: "+kernel+"\ninitrd: /etc/shadow\n"), 0o600)
	out, err := exec.Command(testenv.Binary(t), "vm", "--host", h.Socket(), "create", "--start", "-f", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "spec field initrd: /etc/shadow is outside the allowed image directories [") ||
		!strings.Contains(string(out), guestDir) {
		t.Fatalf("vm create with initrd /etc/shadow: err %v, output %s", err, out)
	}
	assertNothingLeft(t, h, "cli initrd /etc/shadow")

	charDev := filepath.Join(tmp, "sda-char")
	blockDev := filepath.Join(tmp, "sda-block")
	testenv.Run(t, "mknod", charDev, "c", "1", "3")  // /dev/null's numbers, inside an allowed dir
	testenv.Run(t, "mknod", blockDev, "b", "7", "0") // loop0's numbers
	escape := filepath.Join(tmp, "initrd.img")
	os.Symlink("/etc/shadow", escape)
	for _, c2 := range []struct {
		what, want string
		sentinel   error
		edit       func(*hostd.Spec)
	}{
		{"initrd /etc/shadow", "spec field initrd: /etc/shadow is outside the allowed image directories", hostd.ErrUnauthorized,
			func(s *hostd.Spec) { s.Initrd = "/etc/shadow" }},
		{"kernel /root/secret", "spec field kernel: /root/secret is outside", hostd.ErrUnauthorized,
			func(s *hostd.Spec) { s.Kernel = "/root/secret" }},
		{"disk /dev/sda", "spec field disks[0].path: /dev/sda is outside the allowed disk directories", hostd.ErrUnauthorized,
			func(s *hostd.Spec) { s.Disks = []hostd.Disk{{ID: "d0", Path: "/dev/sda", Format: "raw"}} }},
		{"disk ../../etc/shadow", "field disks[0].path: ../../etc/shadow is not an absolute path", hostd.ErrInvalidSpec,
			func(s *hostd.Spec) { s.Disks = []hostd.Disk{{ID: "d0", Path: "../../etc/shadow", Format: "raw"}} }},
		{"char device node as disk", "spec field disks[0].path: " + charDev + " is a character device, not a regular file", hostd.ErrUnauthorized,
			func(s *hostd.Spec) { s.Disks = []hostd.Disk{{ID: "d0", Path: charDev, Format: "raw"}} }},
		{"block device node as disk", "spec field disks[0].path: " + blockDev + " is a block device, not a regular file", hostd.ErrUnauthorized,
			func(s *hostd.Spec) { s.Disks = []hostd.Disk{{ID: "d0", Path: blockDev, Format: "raw"}} }},
		{"symlink out of an allowed dir", "spec field initrd: " + escape + " (resolves to /etc/shadow) is outside", hostd.ErrUnauthorized,
			func(s *hostd.Spec) { s.Initrd = escape }},
		{"vfio-pci host outside the pool", `spec field devices[0].props.host: 0000:00:1f.2 is not an entry of pool "ib"`, hostd.ErrUnauthorized,
			func(s *hostd.Spec) {
				s.Devs = []hostd.Dev{{ID: "hca0", Driver: "vfio-pci", Passthrough: true, Pool: "ib", Props: map[string]string{"host": "0000:00:1f.2"}}}
			}},
		{"vfio-pci without a pool", "spec field devices[0].driver: vfio-pci attaches host hardware", hostd.ErrUnauthorized,
			func(s *hostd.Spec) {
				s.Devs = []hostd.Dev{{ID: "hca0", Driver: "vfio-pci", Props: map[string]string{"host": "0000:3b:00.1"}}}
			}},
	} {
		s := base
		c2.edit(&s)
		_, err := c.Create(ctx, s, true)
		assertRefused(t, h, "create: "+c2.what, err, c2.sentinel, c2.want)
	}

	// An incoming migration's spec is held to the same policy.
	s := base
	s.Initrd = "/etc/shadow"
	_, err = c.Incoming(ctx, hostd.IncomingRequest{Spec: s})
	assertRefused(t, h, "incoming initrd /etc/shadow", err, hostd.ErrUnauthorized, "spec field initrd: /etc/shadow is outside")

	restoreAttacks(t, h, base)
	policyControl(t, base)
}

// restoreAttacks: a checkpoint's manifest rewritten to read /etc/shadow,
// and a genuine checkpoint restored on a host whose policy does not allow
// its kernel, are both refused.
func restoreAttacks(t *testing.T, h *testenv.Hostd, spec hostd.Spec) {
	c := h.Client()
	ctx := ctxT(t, 2*time.Minute)
	if _, err := c.Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "ckpt")
	if _, err := c.Checkpoint(ctx, spec.Name, hostd.CheckpointOptions{Dir: dir, Stop: true, NoGuest: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	data, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
	signed := data
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m["spec"].(map[string]any)["initrd"] = "/etc/shadow"
	data, _ = json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	// The manifest's signature refuses the edit before the policy sees
	// it; the policy's own refusal of a restore is the strict host's below.
	_, err := c.Restore(ctx, hostd.RestoreOptions{Dir: dir}, nil)
	assertRefused(t, h, "restore of a manifest with initrd /etc/shadow", err, hostd.ErrUnauthorized, "does not match the data")

	// The same checkpoint untampered, on a host that allows other dirs.
	os.WriteFile(filepath.Join(dir, "manifest.json"), signed, 0o600)
	other := t.TempDir()
	// It trusts h's checkpoints: it holds the same (local) certificate.
	cert, key := pki.CertPaths(filepath.Join(h.StateDir, "pki"), pki.RoleHostd, "local")
	strict := testenv.StartHostd(t, "strict", nil, "", "policy: {image_dirs: ["+strconv.Quote(other)+"], disk_dirs: ["+strconv.Quote(other)+"]}\n"+
		"tls_cert: "+cert+"\ntls_key: "+key+"\ntls_ca: "+filepath.Join(h.StateDir, "pki", pki.CACertFile)+"\n")
	_, err = strict.Client().Restore(ctx, hostd.RestoreOptions{Dir: dir}, nil)
	assertRefused(t, strict, "restore on a host that does not allow the kernel", err, hostd.ErrUnauthorized,
		"spec field kernel: "+spec.Kernel+" is outside the allowed image directories ["+other+"]")
}

// policyControl: without the defence (a policy allowing /etc), the same
// spec puts /etc/shadow into a running QEMU: the refusals above are the
// policy's doing.
func policyControl(t *testing.T, spec hostd.Spec) {
	open := testenv.StartHostd(t, "open", nil, "", "policy: {image_dirs: [\"/etc\", "+strconv.Quote(filepath.Dir(spec.Kernel))+"]}\n")
	ctx := ctxT(t, time.Minute)
	spec.Initrd = "/etc/shadow"
	info, err := open.Client().Create(ctx, spec, true)
	if err != nil {
		t.Fatalf("control: a hostd allowing /etc refused: %v", err)
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(info.PID) + "/cmdline")
	if !strings.Contains(string(cmdline), "/etc/shadow") {
		t.Fatalf("control: qemu %d runs without /etc/shadow: %q", info.PID, cmdline)
	}
	if got := procStatus(t, info.PID, "Seccomp"); got != "2" {
		t.Fatalf("qemu %d: Seccomp %s, want 2 (filter)", info.PID, got)
	}
	open.Client().Stop(ctx, spec.Name, time.Second)
}

// TestQEMURunsSandboxedAsQEMUUser: with qemu_user, QEMU runs under its
// seccomp filter as that user, and what it does after dropping root (a
// checkpoint into a descriptor, a restore from one, hot-plugging an
// emulated NIC, a warm restart on the shared RAM file) still works.
func TestQEMURunsSandboxedAsQEMUUser(t *testing.T) {
	testenv.RequireRoot(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	h := testenv.StartHostd(t, "a", nil, "", "qemu_user: nobody\n")
	c := h.Client()
	ctx := ctxT(t, 4*time.Minute)
	spec := guestSpec(t, "sb1", "")
	info, err := c.Create(ctx, spec, true)
	if err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "sb1")
	waitCounter(t, log, 3, 90*time.Second)
	assertConfined := func(pid int) {
		t.Helper()
		if got := procStatus(t, pid, "Seccomp"); got != "2" {
			t.Fatalf("qemu %d: Seccomp %s, want 2 (filter)", pid, got)
		}
		want := strings.Repeat(nobody.Uid+" ", 4)
		if got := procStatus(t, pid, "Uid"); got+" " != want {
			t.Fatalf("qemu %d: Uid %s, want %s", pid, got, want)
		}
	}
	assertConfined(info.PID)
	dir := filepath.Join(t.TempDir(), "ckpt")
	if _, err := c.Checkpoint(ctx, "sb1", hostd.CheckpointOptions{Dir: dir, Stop: true}, nil); err != nil {
		t.Fatal(err)
	}
	last := counters(log)[len(counters(log))-1]
	rinfo, err := c.Restore(ctx, hostd.RestoreOptions{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	assertConfined(rinfo.PID)
	waitCounter(t, log, last+2, 60*time.Second)
	waitPresent(t, c, "sb1", "pt0")
	if err := syscall.Kill(rinfo.PID, 0); err != nil {
		t.Fatalf("restored qemu: %v", err)
	}
	// A warm restart: the new QEMU maps the RAM file as root, then drops.
	if !*mustStatus(t, c, "sb1").Spec.SharedMemory {
		t.Log("no room in /dev/shm for shared memory: warm restart not tried")
	} else {
		res, err := c.Rejuvenate(ctx, "sb1", hostd.RejuvenateOptions{})
		if err != nil || res.NewPID == 0 || res.Fallback {
			t.Fatalf("rejuvenate: %+v %v", res, err)
		}
		assertConfined(res.NewPID)
		last = counters(log)[len(counters(log))-1]
		waitCounter(t, log, last+2, 60*time.Second)
	}
	if _, err := c.Stop(ctx, "sb1", time.Second); err != nil {
		t.Fatal(err)
	}
}

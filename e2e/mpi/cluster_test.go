package mpi_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// cluster is the test topology of ARCHITECTURE.md: hosts a, b, c (network
// namespaces, a hostd each, mutual TLS), a coordinator in a management
// namespace, and one L2 segment for the guests (a bridge per host, joined
// across hosts). Host a's bridge also has 10.79.0.1, from where the test
// reaches the guests over ssh as user mpi.
type cluster struct {
	t     *testing.T
	coord *testenv.Coord
	hosts map[string]*testenv.Hostd
	ns    map[string]*testenv.NetNS
	image string // build/guest-mpi
}

var hostIP = map[string]string{"a": "10.77.9.11", "b": "10.77.9.12", "c": "10.77.9.13"}

// vmIP is the guest address of vmN.
func vmIP(n int) string { return fmt.Sprintf("10.79.0.%d", 10+n) }

// mpiImage is the MPI guest's directory ($SYMVIRT_GUEST_MPI_DIR or
// build/guest-mpi): skipped (failed under SYMVIRT_REQUIRE_QEMU=1) if it is
// not built.
func mpiImage(t *testing.T) string {
	testguest.Paths(t) // QEMU and the kernel are there
	dir := os.Getenv("SYMVIRT_GUEST_MPI_DIR")
	if dir == "" {
		dir = filepath.Join(testenv.RepoRoot(t), "build", "guest-mpi")
	}
	for _, f := range []string{"vmlinuz", "initrd.img", "id_ed25519", "ssh_known_hosts"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			msg := "MPI guest not built: run make guest-mpi (" + err.Error() + ")"
			if os.Getenv("SYMVIRT_REQUIRE_QEMU") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

func newCluster(t *testing.T) *cluster {
	testenv.RequireRoot(t)
	c := &cluster{t: t, hosts: map[string]*testenv.Hostd{}, ns: map[string]*testenv.NetNS{}, image: mpiImage(t)}
	certs := t.TempDir()
	bin := testenv.Binary(t)
	run := func(args ...string) {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("symvirt %v: %v\n%s", args, err, out)
		}
	}
	run("certs", "init", "--dir", certs)
	run("certs", "issue", "--dir", certs, "--role", "coord", "--name", "coord", "--host", "10.77.9.1")
	mgmt := testenv.NewNetNS(t, "m")
	testenv.Bridge(t, mgmt, "mgmt")
	testenv.Run(t, "ip", "-n", mgmt.Name, "addr", "add", "10.77.9.1/24", "dev", "mgmt")
	// The guest images may be used from where they were built.
	var dirs []string
	for _, d := range append(testenv.PolicyDirs(t), c.image) {
		dirs = append(dirs, strconv.Quote(d))
	}
	list := strings.Join(dirs, ", ")
	policy := fmt.Sprintf("policy: {image_dirs: [%s], disk_dirs: [%s]}\n", list, list)
	var prev *testenv.NetNS
	for _, name := range []string{"a", "b", "c"} {
		ns := testenv.NewNetNS(t, name)
		c.ns[name] = ns
		testenv.Attach(t, ns, hostIP[name]+"/24", mgmt, "mgmt")
		testenv.Bridge(t, ns, "br0")
		for i := 1; i <= 2; i++ {
			testenv.Tap(t, ns, fmt.Sprintf("tvm%d", i), "br0")
		}
		if prev != nil {
			testenv.BridgeLink(t, prev, "br0", ns, "br0")
		}
		prev = ns
		run("certs", "issue", "--dir", certs, "--role", "hostd", "--name", name, "--host", hostIP[name])
		c.hosts[name] = testenv.StartHostd(t, name, ns, hostIP[name]+":7070", policy,
			"--tls-cert", filepath.Join(certs, "hostd-"+name+".crt"),
			"--tls-key", filepath.Join(certs, "hostd-"+name+".key"),
			"--tls-ca", filepath.Join(certs, "ca.crt"), "--guest-timeout", "60s")
	}
	testenv.Run(t, "ip", "-n", c.ns["a"].Name, "addr", "add", "10.79.0.1/24", "dev", "br0")
	// Debian under TCG is slow to answer a PREPARE while its ranks compute:
	// generous deadlines.
	c.coord = testenv.StartCoord(t, mgmt, t.TempDir(), nil,
		"--tls-cert", filepath.Join(certs, "coord-coord.crt"),
		"--tls-key", filepath.Join(certs, "coord-coord.key"), "--tls-ca", filepath.Join(certs, "ca.crt"),
		"--lease", "30s", "--prepare-timeout", "60s", "--step-timeout", "90s", "--transfer-timeout", "180s")
	for _, name := range []string{"a", "b", "c"} {
		c.cli("hosts", "add", name, hostIP[name]+":7070")
	}
	return c
}

// jobYAML is job name with vmI on hosts[I-1]: the MPI guest, one
// virtio-net NIC on the job's L2, the agent on virtio-serial. fromDisk:
// each VM boots from its own qcow2 overlay on rootfs.qcow2 (as users run
// it); else from RAM (initrd.img).
func (c *cluster) jobYAML(name string, fromDisk bool, hosts ...string) string {
	var b strings.Builder
	var names []string
	for i := range hosts {
		names = append(names, fmt.Sprintf("vm%d=%s", i+1, vmIP(i+1)))
	}
	fmt.Fprintf(&b, "name: %s\nvms:\n", name)
	for i, h := range hosts {
		n := i + 1
		boot := fmt.Sprintf("initrd: %s\n      append: \"console=ttyS0 quiet panic=-1 rdinit=/sbin/init",
			filepath.Join(c.image, "initrd.img"))
		if fromDisk {
			disk := filepath.Join(c.t.TempDir(), fmt.Sprintf("vm%d.qcow2", n))
			testenv.Run(c.t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
				filepath.Join(c.image, "rootfs.qcow2"), disk)
			boot = fmt.Sprintf("initrd: %s\n      disks: [{id: root, path: %s}]\n      append: \"console=ttyS0 quiet panic=-1 root=/dev/vda",
				filepath.Join(c.image, "boot-initrd.img"), disk)
		}
		fmt.Fprintf(&b, `  - name: vm%d
    host: %s
    spec:
      memory: 768M
      vcpus: 1
      kernel: %s
      %s symvirt.name=vm%d symvirt.ip=%s/24 symvirt.hosts=%s"
      guest_channel: {type: virtio-serial}
      nics:
        - {id: net0, model: virtio-net-pci, backend: tap, tap: tvm%d, mac: "52:54:00:79:00:0%d"}
`, n, h, filepath.Join(c.image, "vmlinuz"), boot, n, vmIP(n), strings.Join(names, ","), n, n)
	}
	return b.String()
}

// cli runs symvirt against the coordinator and fails the test on error.
func (c *cluster) cli(args ...string) string {
	c.t.Helper()
	out, err := c.coord.CLI(c.t, args...)
	if err != nil {
		c.t.Fatalf("symvirt %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// op runs an operation with --output json, logs it and decodes its result.
func (c *cluster) op(args ...string) machine.Result {
	c.t.Helper()
	start := time.Now()
	out, err := c.coord.CLI(c.t, append(args, "--output", "json")...)
	var res machine.Result
	if i := strings.Index(out, "{"); i >= 0 {
		json.NewDecoder(strings.NewReader(out[i:])).Decode(&res)
	}
	if err != nil {
		c.dumpGuests()
		c.t.Fatalf("symvirt %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c.t.Logf("symvirt %s: %s in %.1fs", strings.Join(args, " "), res.Outcome, time.Since(start).Seconds())
	return res
}

// where returns the host each VM of the job is on, per the coordinator.
func (c *cluster) where(job string) map[string]string {
	out := c.cli("jobs", "--output", "json")
	var jobs []coord.Job
	if err := json.Unmarshal([]byte(out), &jobs); err != nil {
		c.t.Fatalf("symvirt jobs: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, j := range jobs {
		if j.Name == job {
			for _, v := range j.VMs {
				m[v.Name] = v.Host
			}
		}
	}
	return m
}

func (c *cluster) serial(host, vm string) string {
	return c.hosts[host].Layout().SerialLog(vm)
}

// waitSerial waits until vm's console on host matches pattern.
func (c *cluster) waitSerial(host, vm, pattern string, timeout time.Duration) {
	c.t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(timeout)
	for {
		if data, _ := os.ReadFile(c.serial(host, vm)); re.Match(data) {
			return
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(c.serial(host, vm))
			c.t.Fatalf("%s on %s: no %q after %v\n%s", vm, host, pattern, timeout, tail(string(data), 3000))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// ssh runs a command in a guest as user mpi, from host a's bridge.
func (c *cluster) ssh(ip string, timeout time.Duration, command string) (string, error) {
	args := []string{"netns", "exec", c.ns["a"].Name, "ssh", "-i", filepath.Join(c.image, "id_ed25519"),
		"-o", "UserKnownHostsFile=" + filepath.Join(c.image, "ssh_known_hosts"), "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "mpi@" + ip, command}
	cmd := exec.Command("timeout", append([]string{fmt.Sprintf("%.0fs", timeout.Seconds()), "ip"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// killAll kills every QEMU of the job (a real crash of the VMs) and waits
// until the hostds saw them go.
func (c *cluster) killAll(job string) {
	for vm, host := range c.where(job) {
		st, err := c.hosts[host].Client().Status(ctxT(c.t, 10*time.Second), vm)
		if err == nil && st.PID > 0 {
			killPID(st.PID)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for vm, host := range c.where(job) {
		for {
			st, err := c.hosts[host].Client().Status(ctxT(c.t, 10*time.Second), vm)
			if err != nil || st.State == "stopped" {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("vm %s on %s still %s after kill", vm, host, st.State)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// dumpGuests logs the end of every VM's console (on every host).
func (c *cluster) dumpGuests() {
	for h, hd := range c.hosts {
		vms, _ := os.ReadDir(hd.Layout().VMs())
		for _, vm := range vms {
			data, _ := os.ReadFile(c.serial(h, vm.Name()))
			c.t.Logf("---- %s on %s (console tail) ----\n%s", vm.Name(), h, tail(string(data), 2500))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

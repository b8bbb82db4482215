package scenario

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// Cluster is the test topology of ARCHITECTURE.md: hosts a, b, c (network
// namespaces, a hostd each, mutual TLS), a coordinator in a management
// namespace, and one L2 segment for the guests (a bridge per host, joined
// across hosts). Host a's bridge also has 10.79.0.1, from where the
// cluster reaches the guests over ssh as user mpi.
type Cluster struct {
	TB    testing.TB
	Coord *testenv.Coord
	Hosts map[string]*testenv.Hostd
	NS    map[string]*testenv.NetNS
	Image string // build/guest-mpi
}

// HostIP is each host's address on the management network.
var HostIP = map[string]string{"a": "10.77.9.11", "b": "10.77.9.12", "c": "10.77.9.13"}

// VMIP is the guest address of vmN.
func VMIP(n int) string { return fmt.Sprintf("10.79.0.%d", 10+n) }

// Image is the MPI guest's directory ($SYMVIRT_GUEST_MPI_DIR or
// build/guest-mpi): skipped (failed under SYMVIRT_REQUIRE_QEMU=1) if it is
// not built.
func Image(t testing.TB) string {
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

// NewCluster starts the hosts and the coordinator; they are stopped at
// t's cleanup.
func NewCluster(t testing.TB) *Cluster {
	testenv.RequireRoot(t)
	c := &Cluster{TB: t, Hosts: map[string]*testenv.Hostd{}, NS: map[string]*testenv.NetNS{}, Image: Image(t)}
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
	policy := c.policy()
	var prev *testenv.NetNS
	for _, name := range []string{"a", "b", "c"} {
		ns := testenv.NewNetNS(t, name)
		c.NS[name] = ns
		testenv.Attach(t, ns, HostIP[name]+"/24", mgmt, "mgmt")
		testenv.Bridge(t, ns, "br0")
		for i := 1; i <= 2; i++ {
			testenv.Tap(t, ns, fmt.Sprintf("tvm%d", i), "br0")
		}
		if prev != nil {
			testenv.BridgeLink(t, prev, "br0", ns, "br0")
		}
		prev = ns
		run("certs", "issue", "--dir", certs, "--role", "hostd", "--name", name, "--host", HostIP[name])
		c.Hosts[name] = testenv.StartHostd(t, name, ns, HostIP[name]+":7070", policy,
			"--tls-cert", filepath.Join(certs, "hostd-"+name+".crt"),
			"--tls-key", filepath.Join(certs, "hostd-"+name+".key"),
			"--tls-ca", filepath.Join(certs, "ca.crt"), "--guest-timeout", "60s")
	}
	testenv.Run(t, "ip", "-n", c.NS["a"].Name, "addr", "add", "10.79.0.1/24", "dev", "br0")
	// Debian under TCG is slow to answer a PREPARE while its ranks compute:
	// generous deadlines.
	c.Coord = testenv.StartCoord(t, mgmt, t.TempDir(), nil,
		"--tls-cert", filepath.Join(certs, "coord-coord.crt"),
		"--tls-key", filepath.Join(certs, "coord-coord.key"), "--tls-ca", filepath.Join(certs, "ca.crt"),
		"--lease", "30s", "--prepare-timeout", "60s", "--step-timeout", "90s", "--transfer-timeout", "180s")
	for _, name := range []string{"a", "b", "c"} {
		c.CLI("hosts", "add", name, HostIP[name]+":7070")
	}
	return c
}

// policy lets specs use the guest images from where they were built.
func (c *Cluster) policy() string {
	var dirs []string
	for _, d := range append(testenv.PolicyDirs(c.TB), c.Image) {
		dirs = append(dirs, strconv.Quote(d))
	}
	list := strings.Join(dirs, ", ")
	return fmt.Sprintf("policy: {image_dirs: [%s], disk_dirs: [%s]}\n", list, list)
}

// JobYAML is job name with vmI on hosts[I-1]: the MPI guest, one
// virtio-net NIC on the job's L2, the agent on virtio-serial. fromDisk:
// each VM boots from its own qcow2 overlay on rootfs.qcow2 (as users run
// it); else from RAM (initrd.img).
func (c *Cluster) JobYAML(name string, fromDisk bool, hosts ...string) string {
	var b strings.Builder
	var names []string
	for i := range hosts {
		names = append(names, fmt.Sprintf("vm%d=%s", i+1, VMIP(i+1)))
	}
	fmt.Fprintf(&b, "name: %s\nvms:\n", name)
	for i, h := range hosts {
		n := i + 1
		boot := fmt.Sprintf("initrd: %s\n      append: \"console=ttyS0 quiet panic=-1 rdinit=/sbin/init",
			filepath.Join(c.Image, "initrd.img"))
		if fromDisk {
			disk := filepath.Join(c.TB.TempDir(), fmt.Sprintf("vm%d.qcow2", n))
			testenv.Run(c.TB, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
				filepath.Join(c.Image, "rootfs.qcow2"), disk)
			boot = fmt.Sprintf("initrd: %s\n      disks: [{id: root, path: %s}]\n      append: \"console=ttyS0 quiet panic=-1 root=/dev/vda",
				filepath.Join(c.Image, "boot-initrd.img"), disk)
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
`, n, h, filepath.Join(c.Image, "vmlinuz"), boot, n, VMIP(n), strings.Join(names, ","), n, n)
	}
	return b.String()
}

// CLI runs symvirt against the coordinator and fails the test on error.
func (c *Cluster) CLI(args ...string) string {
	c.TB.Helper()
	out, err := c.Coord.CLI(c.TB, args...)
	if err != nil {
		c.TB.Fatalf("symvirt %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Op runs an operation with --output json, logs it and decodes its result.
func (c *Cluster) Op(args ...string) machine.Result {
	c.TB.Helper()
	start := time.Now()
	out, err := c.Coord.CLI(c.TB, append(args, "--output", "json")...)
	var res machine.Result
	if i := strings.Index(out, "{"); i >= 0 {
		json.NewDecoder(strings.NewReader(out[i:])).Decode(&res)
	}
	if err != nil {
		c.DumpGuests()
		c.TB.Fatalf("symvirt %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c.TB.Logf("symvirt %s: %s in %.1fs", strings.Join(args, " "), res.Outcome, time.Since(start).Seconds())
	return res
}

// Where returns the host each VM of the job is on, per the coordinator.
func (c *Cluster) Where(job string) map[string]string {
	out := c.CLI("jobs", "--output", "json")
	var jobs []coord.Job
	if err := json.Unmarshal([]byte(out), &jobs); err != nil {
		c.TB.Fatalf("symvirt jobs: %v\n%s", err, out)
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

// Serial is the path of vm's console log on host.
func (c *Cluster) Serial(host, vm string) string {
	return c.Hosts[host].Layout().SerialLog(vm)
}

// WaitSerial waits until vm's console on host matches pattern.
func (c *Cluster) WaitSerial(host, vm, pattern string, timeout time.Duration) {
	c.TB.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(timeout)
	for {
		if data, _ := os.ReadFile(c.Serial(host, vm)); re.Match(data) {
			return
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(c.Serial(host, vm))
			c.TB.Fatalf("%s on %s: no %q after %v\n%s", vm, host, pattern, timeout, Tail(string(data), 3000))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// SSH runs a command in a guest as user mpi, from host a's bridge.
func (c *Cluster) SSH(ip string, timeout time.Duration, command string) (string, error) {
	args := []string{"netns", "exec", c.NS["a"].Name, "ssh", "-i", filepath.Join(c.Image, "id_ed25519"),
		"-o", "UserKnownHostsFile=" + filepath.Join(c.Image, "ssh_known_hosts"), "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "mpi@" + ip, command}
	cmd := exec.Command("timeout", append([]string{fmt.Sprintf("%.0fs", timeout.Seconds()), "ip"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// KillAll kills every QEMU of the job (a real crash of the VMs) and waits
// until the hostds saw them go.
func (c *Cluster) KillAll(job string) {
	for vm, host := range c.Where(job) {
		st, err := c.Hosts[host].Client().Status(c.ctx(10*time.Second), vm)
		if err == nil && st.PID > 0 {
			syscall.Kill(st.PID, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for vm, host := range c.Where(job) {
		for {
			st, err := c.Hosts[host].Client().Status(c.ctx(10*time.Second), vm)
			if err != nil || st.State == "stopped" {
				break
			}
			if time.Now().After(deadline) {
				c.TB.Fatalf("vm %s on %s still %s after kill", vm, host, st.State)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// NodeAlert reports host as failing through scripts/symvirt-node-alert,
// as Slurm's strigger would: every VM must leave it. It returns the
// script's log.
func (c *Cluster) NodeAlert(host string) string {
	c.TB.Helper()
	dir := c.TB.TempDir()
	script := filepath.Join(testenv.RepoRoot(c.TB), "scripts", "symvirt-node-alert")
	cmd := exec.Command("sh", script, host)
	cmd.Env = append(os.Environ(), "SYMVIRT="+testenv.Binary(c.TB), "SYMVIRT_COORD="+c.Coord.Socket(),
		"SYMVIRT_NODE_ALERT_LOG="+filepath.Join(dir, "node-alert.log"), "SYMVIRT_NODE_ALERT_LOGGER=",
		"SYMVIRT_NODE_ALERT_SCONTROL=", "SYMVIRT_NODE_ALERT_CONF=/nonexistent")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	log, _ := os.ReadFile(filepath.Join(dir, "node-alert.log"))
	if err != nil {
		c.DumpGuests()
		c.TB.Fatalf("symvirt-node-alert %s: %v\n%s%s", host, err, out, log)
	}
	c.TB.Logf("symvirt-node-alert %s in %.1fs:\n%s", host, time.Since(start).Seconds(), log)
	return string(log)
}

// DumpGuests logs the end of every VM's console (on every host).
func (c *Cluster) DumpGuests() {
	for h, hd := range c.Hosts {
		vms, _ := os.ReadDir(hd.Layout().VMs())
		for _, vm := range vms {
			data, _ := os.ReadFile(c.Serial(h, vm.Name()))
			c.TB.Logf("---- %s on %s (console tail) ----\n%s", vm.Name(), h, Tail(string(data), 2500))
			c.dumpQEMU(hd, h, vm.Name())
			c.dumpInside(h, vm.Name())
		}
	}
}

// guestDump is what a failure shows of a VM from inside it (as user mpi,
// over ssh, bounded): its TCP connections (queues), the run's processes
// (state, CPU, where they sleep), guestd's view of the hook and its
// journal, the run's last output: a run that stopped shows whether its
// ranks wait on the network, on guestd or on each other.
const guestDump = `echo '-- tcp'; ss -tn 2>&1 | head -30; ` +
	`echo '-- processes'; ps -eo pid,stat,pcpu,wchan:24,args | grep -E '[j]acobi|[p]rted|[m]pirun|[s]ymvirt'; ` +
	`echo '-- hook'; timeout 5 symvirt hook status 2>&1; ` +
	`echo '-- guestd'; journalctl -u symvirt-guestd -n 60 --no-pager -o short-precise 2>&1; ` +
	`echo '-- run'; tail -3 ~/jacobi.out`

// dumpInside logs guestDump from job VM vm, if it answers ssh.
func (c *Cluster) dumpInside(host, vm string) {
	ip, ok := jobVMs[vm]
	if !ok {
		return
	}
	out, err := c.SSH(ip, 20*time.Second, guestDump)
	c.TB.Logf("---- %s on %s (inside, ssh mpi@%s: %v) ----\n%s", vm, host, ip, err, Tail(out, 12000))
}

// dumpQEMU logs a VM's state as its hostd reports it and what its QEMU's
// vCPU threads, and all its threads, ran and waited for a core over one
// second: a guest that stopped answering with its vCPUs idle is halted or
// blocked, one with them busy spins.
func (c *Cluster) dumpQEMU(hd *testenv.Hostd, host, vm string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := hd.Client().Status(ctx, vm)
	if err != nil || info.PID == 0 {
		c.TB.Logf("---- %s on %s: status %+v, %v ----", vm, host, info, err)
		return
	}
	vcpu0, _ := qemu.ThreadsSchedStat(info.PID, qemu.VCPUThreadPrefix)
	all0, _ := qemu.ThreadsSchedStat(info.PID, "")
	time.Sleep(time.Second)
	vcpu1, _ := qemu.ThreadsSchedStat(info.PID, qemu.VCPUThreadPrefix)
	all1, _ := qemu.ThreadsSchedStat(info.PID, "")
	vcpu, all := vcpu1.Sub(vcpu0), all1.Sub(all0)
	c.TB.Logf("---- %s on %s: state %s, QEMU pid %d over 1 s: vCPUs ran %v, waited %v; all threads ran %v, waited %v ----",
		vm, host, info.State, info.PID, vcpu.Run, vcpu.Wait, all.Run, all.Wait)
}

// SaveLogs writes every daemon's output and every VM's console into dir
// (the cluster's own directories go at cleanup).
func (c *Cluster) SaveLogs(dir string) {
	os.WriteFile(filepath.Join(dir, "coord.log"), []byte(c.Coord.Logs()), 0o644)
	for h, hd := range c.Hosts {
		os.WriteFile(filepath.Join(dir, "hostd-"+h+".log"), []byte(hd.Logs()), 0o644)
		vms, _ := os.ReadDir(hd.Layout().VMs())
		for _, vm := range vms {
			data, _ := os.ReadFile(c.Serial(h, vm.Name()))
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("console-%s-on-%s.log", vm.Name(), h)), data, 0o644)
		}
	}
}

func (c *Cluster) ctx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	c.TB.Cleanup(cancel)
	return ctx
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

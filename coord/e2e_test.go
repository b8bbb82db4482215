package coord_test

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
	"github.com/symvirt/symvirt/internal/pausewatch"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// cluster is three hosts (network namespaces) with a hostd each, a
// coordinator in a management namespace, mutual TLS between them, and one
// L2 segment for the guests (a bridge per host, joined across hosts).
type cluster struct {
	t      *testing.T
	coord  *testenv.Coord
	hosts  map[string]*testenv.Hostd
	names  []string
	ckDir  string
	certs  string
	kernel string
	initrd string
	// lastWhere is the placement the coordinator last reported, per job.
	lastWhere map[string]map[string]string
	netns     map[string]*testenv.NetNS // each host's namespace
}

var hostIP = map[string]string{"a": "10.77.9.11", "b": "10.77.9.12", "c": "10.77.9.13"}

const vmsPerHost = 5

// clusterOpts vary a test cluster.
type clusterOpts struct {
	ckDir     string   // checkpoint root (default: a temp dir)
	coordEnv  []string // environment of the coordinator process
	coordArgs []string
	hostdYAML map[string]string // extra hostd configuration, per host
	coordDir  string            // the coordinator's state dir (default: a temp dir)
	// beforeCoord runs once the management namespace exists, before the
	// coordinator starts there; it returns more coordinator flags.
	beforeCoord func(mgmt *testenv.NetNS) []string
}

func newCluster(t *testing.T) *cluster { return newClusterWith(t, clusterOpts{}) }

func newClusterWith(t *testing.T, o clusterOpts) *cluster {
	testenv.RequireRoot(t)
	kernel, _ := testguest.Paths(t)
	c := &cluster{t: t, hosts: map[string]*testenv.Hostd{}, names: []string{"a", "b", "c"}, kernel: kernel, netns: map[string]*testenv.NetNS{}}
	c.ckDir = o.ckDir
	if c.ckDir == "" {
		c.ckDir = t.TempDir()
	}
	c.certs = t.TempDir()
	bin := testenv.Binary(t)
	run := func(args ...string) {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("symvirt %v: %v\n%s", args, err, out)
		}
	}
	run("certs", "init", "--dir", c.certs)
	run("certs", "issue", "--dir", c.certs, "--role", "coord", "--name", "coord", "--host", "10.77.9.1")
	run("certs", "issue", "--dir", c.certs, "--role", "client", "--name", "admin")
	mgmt := testenv.NewNetNS(t, "m")
	testenv.Bridge(t, mgmt, "mgmt")
	testenv.Run(t, "ip", "-n", mgmt.Name, "addr", "add", "10.77.9.1/24", "dev", "mgmt")
	var prev *testenv.NetNS
	for _, name := range c.names {
		ns := testenv.NewNetNS(t, name)
		c.netns[name] = ns
		testenv.Attach(t, ns, hostIP[name]+"/24", mgmt, "mgmt")
		testenv.Bridge(t, ns, "br0")
		for i := 1; i <= vmsPerHost; i++ {
			testenv.Tap(t, ns, fmt.Sprintf("tvm%dp", i), "br0")
			testenv.Tap(t, ns, fmt.Sprintf("tvm%dn", i), "br0")
		}
		if prev != nil {
			testenv.BridgeLink(t, prev, "br0", ns, "br0")
		}
		prev = ns
		run("certs", "issue", "--dir", c.certs, "--role", "hostd", "--name", name, "--host", hostIP[name])
		var pool strings.Builder
		pool.WriteString("pools:\n  nic:\n")
		for i := 1; i <= vmsPerHost; i++ {
			fmt.Fprintf(&pool, "    - {mac: \"52:54:00:0%c:00:0%d\"}\n", 'a'+rune(len(c.hosts)), i)
		}
		pool.WriteString(o.hostdYAML[name])
		c.hosts[name] = testenv.StartHostd(t, name, ns, hostIP[name]+":7070", pool.String(),
			"--tls-cert", filepath.Join(c.certs, "hostd-"+name+".crt"),
			"--tls-key", filepath.Join(c.certs, "hostd-"+name+".key"),
			"--tls-ca", filepath.Join(c.certs, "ca.crt"), "--guest-timeout", "20s")
	}
	args := append([]string{"--tls-cert", filepath.Join(c.certs, "coord-coord.crt"),
		"--tls-key", filepath.Join(c.certs, "coord-coord.key"), "--tls-ca", filepath.Join(c.certs, "ca.crt"),
		"--lease", "8s", "--prepare-timeout", "25s", "--step-timeout", "30s", "--transfer-timeout", "90s"}, o.coordArgs...)
	if o.beforeCoord != nil {
		args = append(args, o.beforeCoord(mgmt)...)
	}
	if o.coordDir == "" {
		o.coordDir = t.TempDir()
	}
	c.coord = testenv.StartCoordIn(t, mgmt, o.coordDir, c.ckDir, o.coordEnv, args...)
	// Under GOFLAGS=-race the coordinator is built with the race detector,
	// which reports on its stderr (part of its logs).
	t.Cleanup(func() {
		if strings.Contains(c.coord.Logs(), "WARNING: DATA RACE") {
			t.Errorf("the coordinator has a data race:\n%s", c.coord.Logs())
		}
	})
	for _, name := range c.names {
		c.cli("hosts", "add", name, hostIP[name]+":7070")
	}
	c.initrd = testguest.Initrd(t, map[string]testguest.File{
		"/bin/hook":                    {Src: hookBinary(t), Mode: 0o755},
		"/etc/symvirt/rc.d/40-echo":    {Mode: 0o755, Data: []byte(echoRC)},
		"/etc/symvirt/rc.d/50-hook":    {Mode: 0o755, Data: []byte(hookRC)},
		"/etc/symvirt/rc.d/60-peer":    {Mode: 0o755, Data: []byte(peersRC)},
		"/etc/symvirt/rc.d/70-faults":  {Mode: 0o755, Data: []byte(faultsRC)},
		"/etc/symvirt/rc.d/80-load":    {Mode: 0o755, Data: []byte(loadRC)},
		"/etc/symvirt/hooks.d/10-slow": {Mode: 0o755, Data: []byte(slowHook)},
		"/etc/symvirt/tick":            {Mode: 0o755, Data: []byte(pausewatch.TickScript)},
		"/bin/tick":                    {Src: pausewatch.TickBinary(t), Mode: 0o755},
	})
	return c
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

// op runs an operation with --output json and decodes its result.
func (c *cluster) op(args ...string) (machine.Result, string, error) {
	out, err := c.coord.CLI(c.t, append(args, "--output", "json")...)
	var res machine.Result
	if i := strings.Index(out, "{"); i >= 0 {
		// The JSON result comes first; an error line may follow it.
		json.NewDecoder(strings.NewReader(out[i:])).Decode(&res)
	}
	return res, out, err
}

// faultsRC arms guest-side faults chosen on the kernel command line:
// symvirt.slow=1 makes the prepare hook take 6 s (a window to inject a
// fault mid-operation); symvirt.stuck=1 freezes the hook application once
// registered, so it never reaches its safe point.
const faultsRC = `#!/bin/sh
[ "$SYMVIRT_SLOW" = 1 ] && touch /run/slow
[ "$SYMVIRT_TICK" = 1 ] && /etc/symvirt/tick
if [ "$SYMVIRT_STUCK" = 1 ]; then
  ( sleep 4; kill -STOP $(pidof hook); echo "hook frozen" ) </dev/null >/dev/console 2>&1 &
fi
exit 0
`

const slowHook = `#!/bin/sh
[ "$1" = prepare ] && [ -e /run/slow ] && sleep 6
exit 0
`

const echoRC = `#!/bin/sh
nc -ll -p 7000 -e cat </dev/null >/dev/null 2>&1 &
`

const hookRC = `#!/bin/sh
( for i in $(seq 1 200); do [ -S /run/symvirt/hook.sock ] && break; sleep 0.1; done
  /bin/hook mpi-rank 0 ) >/dev/console 2>&1 &
`

// peersRC: the "client" VM keeps one TCP connection to each peer and
// prints every number the peer echoes back. A broken connection ends the
// pipeline; a new one would start again at 0.
const peersRC = `#!/bin/sh
[ "$SYMVIRT_ROLE" = client ] || exit 0
for p in $(echo "$SYMVIRT_PEERS" | tr , " "); do
  ( sleep 2
    until nc -w 2 $p 7000 </dev/null; do sleep 1; done
    i=0; while :; do echo $i; i=$((i+1)); sleep 0.5; done | nc $p 7000 | while read l; do echo "peer-$p $l"; done
    echo "peer-$p connection ended" ) </dev/null >/dev/console 2>&1 &
done
`

// jobYAML is a job of n VMs, vmI on host hosts[I-1]; extra is appended
// to every VM's kernel command line.
func (c *cluster) jobYAML(name, extra string, hosts ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nvms:\n", name)
	var peers []string
	for i := range hosts[1:] {
		peers = append(peers, fmt.Sprintf("10.79.0.%d", 12+i))
	}
	for i, h := range hosts {
		n := i + 1
		role := "server"
		if n == 1 {
			role = "client"
		}
		fmt.Fprintf(&b, `  - name: vm%d
    host: %s
    spec:
      memory: 256M
      kernel: %s
      initrd: %s
      append: "console=ttyS0 quiet panic=-1 symvirt.counter=1 symvirt.agent=1 symvirt.bond=1 symvirt.ip=10.79.0.%d/24 symvirt.role=%s symvirt.peers=%s%s"
      guest_channel: {type: virtio-serial}
      nics:
        - {id: pt0, model: vmxnet3, backend: tap, tap: tvm%dp, passthrough: true, pool: nic}
        - {id: net1, model: virtio-net-pci, backend: tap, tap: tvm%dn, mac: "52:54:00:77:00:0%d"}
`, n, h, c.kernel, c.initrd, 10+n, role, strings.Join(peers, ","), extra, n, n, n)
	}
	return b.String()
}

func (c *cluster) createJob(name string, hosts ...string) { c.createJobWith(name, "", hosts...) }

// createJobFenced creates a job with network_fence: scope (extra as for
// jobYAML).
func (c *cluster) createJobFenced(name, scope, extra string, hosts ...string) {
	f := filepath.Join(c.t.TempDir(), "job.yaml")
	os.WriteFile(f, []byte("network_fence: "+scope+"\n"+c.jobYAML(name, extra, hosts...)), 0o600)
	c.cli("jobs", "create", "-f", f)
}

func (c *cluster) createJobWith(name, extra string, hosts ...string) {
	f := filepath.Join(c.t.TempDir(), "job.yaml")
	os.WriteFile(f, []byte(c.jobYAML(name, extra, hosts...)), 0o600)
	c.cli("jobs", "create", "-f", f)
}

// where returns the host each VM of the job is on, per the coordinator
// (or as it last said, while the coordinator is down).
func (c *cluster) where(job string) map[string]string {
	out, err := c.coord.CLI(c.t, "jobs", "--output", "json")
	if err != nil {
		if c.coord.Exited() && c.lastWhere[job] != nil {
			return c.lastWhere[job]
		}
		c.t.Fatalf("symvirt jobs: %v\n%s", err, out)
	}
	var jobs []coord.Job
	json.Unmarshal([]byte(out), &jobs)

	m := map[string]string{}
	for _, j := range jobs {
		if j.Name == job {
			for _, v := range j.VMs {
				m[v.Name] = v.Host
			}
		}
	}
	if c.lastWhere == nil {
		c.lastWhere = map[string]map[string]string{}
	}
	c.lastWhere[job] = m
	return m
}

func (c *cluster) serial(host, vm string) string {
	return c.hosts[host].Layout().SerialLog(vm)
}

var peerRE = regexp.MustCompile(`peer-(10\.79\.0\.\d+) (\d+)`)

// peerLines returns, per peer, the numbers echoed back in one log.
func peerLines(path string) map[string][]int {
	data, _ := os.ReadFile(path)
	out := map[string][]int{}
	for _, m := range peerRE.FindAllStringSubmatch(string(data), -1) {
		n, _ := strconv.Atoi(m[2])
		out[m[1]] = append(out[m[1]], n)
	}
	return out
}

// traffic counts the echo lines per peer in the client VM's log.
func (c *cluster) traffic(host string) map[string]int {
	n := map[string]int{}
	for p, l := range peerLines(c.serial(host, "vm1")) {
		n[p] = len(l)
	}
	return n
}

// waitTraffic waits until the client VM (on host) logged at least 5 new
// echoes from every peer after the counts in since, and checks that no
// connection was re-established (a new connection would count from 0).
func (c *cluster) waitTraffic(job, host string, peers []string, since map[string]int) map[string]int {
	c.t.Helper()
	path := c.serial(host, "vm1")
	deadline := time.Now().Add(90 * time.Second)
	for {
		lines := peerLines(path)
		ok := true
		for _, p := range peers {
			l := lines[p]
			if len(l) < since[p]+5 {
				ok = false
			}
			for i := 1; i < len(l); i++ {
				if l[i] == 0 {
					c.t.Fatalf("peer %s: the TCP connection was re-established (counter restarted at 0)", p)
				}
			}
		}
		if ok {
			return c.traffic(host)
		}
		data, _ := os.ReadFile(path)
		broken := strings.Contains(string(data), "connection ended")
		if broken || time.Now().After(deadline) {
			for vm, h := range c.where(job) {
				d, _ := os.ReadFile(c.serial(h, vm))
				c.t.Logf("---- %s on %s ----\n%s", vm, h, tailStr(filterCounter(string(d)), 5000))
			}
			c.t.Fatalf("traffic from %v on %s did not go on (broken: %v; had %v)", peers, host, broken, since)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func filterCounter(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "symvirt-counter") && !strings.Contains(l, "\"level\":\"DEBUG\"") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func tailStr(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// killAll kills every QEMU of the job (a real crash of the VMs).
func (c *cluster) killAll(job string) {
	for vm, host := range c.where(job) {
		st, err := c.hosts[host].Client().Status(ctxT(c.t, 10*time.Second), vm)
		if err == nil && st.PID > 0 {
			syscallKill(st.PID)
		}
	}
	// Wait until the hostds saw them go.
	deadline := time.Now().Add(20 * time.Second)
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

func hookBinary(t *testing.T) string { return testenv.Make(t, "examples/hook") }

func TestJobKeepsConnectionsAcrossOperations(t *testing.T) {
	c := newCluster(t)
	c.createJob("j1", "a", "b", "c")
	peers := []string{"10.79.0.12", "10.79.0.13"}
	last := c.waitTraffic("j1", "a", peers, map[string]int{})

	res, out, err := c.op("checkpoint", "j1")
	if err != nil || res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint: %v\n%s", err, out)
	}
	ck := res.CheckpointID
	t.Logf("checkpoint %s complete", ck)
	last = c.waitTraffic("j1", "a", peers, last)
	// The application in each guest was told.
	for vm, host := range c.where("j1") {
		waitFile(t, c.serial(host, vm), `hook: outcome checkpointed`)
	}

	// Kill every VM of the job, then restart it from the checkpoint.
	c.killAll("j1")
	last = c.traffic("a")
	if res, out, err = c.op("restart", "j1", "--checkpoint", ck); err != nil || res.Outcome != machine.OutcomeRestored {
		t.Fatalf("restart: %v\n%s", err, out)
	}
	last = c.waitTraffic("j1", "a", peers, last)
	for vm, host := range c.where("j1") {
		waitFile(t, c.serial(host, vm), `hook: outcome restored`)
	}

	// Migrate one VM, then empty host c.
	if res, out, err = c.op("migrate", "vm2", "--to", "c"); err != nil || res.Outcome != machine.OutcomeMigrated {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if w := c.where("j1"); w["vm2"] != "c" {
		t.Fatalf("after migrate vm2 is on %s", w["vm2"])
	}
	last = c.waitTraffic("j1", "a", peers, last)
	waitFile(t, c.serial("c", "vm2"), `hook: outcome migrated`)

	if _, out, err = c.op("evacuate", "c"); err != nil {
		t.Fatalf("evacuate: %v\n%s", err, out)
	}
	w := c.where("j1")
	if w["vm2"] == "c" || w["vm3"] == "c" {
		t.Fatalf("after evacuate: %v", w)
	}
	if vms, _ := c.hosts["c"].Client().List(ctxT(t, 10*time.Second)); len(vms) != 0 {
		t.Fatalf("host c still has %v", vms)
	}
	last = c.waitTraffic("j1", w["vm1"], peers, last)

	// Everything dies again; restart from the checkpoint without host a.
	c.killAll("j1")
	if res, out, err = c.op("restart", "j1", "--checkpoint", ck, "--exclude-host", "a"); err != nil {
		t.Fatalf("restart --exclude-host a: %v\n%s", err, out)
	}
	w = c.where("j1")
	if w["vm1"] == "a" {
		t.Fatalf("vm1 restored on the excluded host: %v", w)
	}
	c.waitTraffic("j1", w["vm1"], peers, c.traffic(w["vm1"]))
	t.Logf("placement after restart --exclude-host a: %v", w)
}

func waitFile(t *testing.T, path, pattern string) {
	t.Helper()
	re := regexp.MustCompile(pattern)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if data, _ := os.ReadFile(path); re.Match(data) {
			return
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(path)
			t.Fatalf("%s: no %q\n%s", path, pattern, tailStr(string(data), 1500))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

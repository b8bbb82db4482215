package coord_test

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// svcScript is a service VM's server: it echoes every line; "burn" also
// makes the guest spin (its load goes up) through /run/burn, which a loop
// started at boot waits for (a process started by the connection's own
// shell might end with it).
const svcScript = `#!/bin/sh
while read l; do
  [ "$l" = burn ] && touch /run/burn
  echo "$l"
done
`

const svcRC = `#!/bin/sh
nc -ll -p 7000 -e /bin/svc </dev/null >/dev/null 2>&1 &
( until [ -e /run/burn ]; do sleep 1; done; echo "burning"; while :; do :; done ) </dev/null >/dev/console 2>&1 &
`

// consolidateAsk is how often the clients ask while VMs move.
const consolidateAsk = 40 * time.Millisecond

var consolHosts = []string{"a", "b", "c", "d"}

func consolIP(h string) string { return fmt.Sprintf("10.77.9.%d", 21+slices.Index(consolHosts, h)) }

// consolCluster is four hosts whose VM bridges are joined by VXLAN over
// the cluster network (their underlay addresses), a coordinator, and a
// client namespace on the VM network; every host has a tap per service.
func consolCluster(t *testing.T, nSvc int) (*cluster, *testenv.NetNS) {
	testenv.RequireRoot(t)
	kernel, _ := testguest.Paths(t)
	c := &cluster{t: t, hosts: map[string]*testenv.Hostd{}, names: consolHosts, kernel: kernel, ckDir: t.TempDir(), certs: t.TempDir()}
	certs := func(args ...string) {
		if out, err := testenvCLI(t, append([]string{"certs"}, args...)...); err != nil {
			t.Fatalf("symvirt certs %v: %v\n%s", args, err, out)
		}
	}
	certs("init", "--dir", c.certs)
	certs("issue", "--dir", c.certs, "--role", "coord", "--name", "coord", "--host", "10.77.9.1")
	mgmt := testenv.NewNetNS(t, "m")
	testenv.Bridge(t, mgmt, "mgmt")
	testenv.Run(t, "ip", "-n", mgmt.Name, "addr", "add", "10.77.9.1/24", "dev", "mgmt")
	underlay := map[*testenv.NetNS]string{}
	var first *testenv.NetNS
	migration := consolMigrationConfig(t)
	for _, name := range c.names {
		ns := testenv.NewNetNS(t, name)
		if first == nil {
			first = ns
		}
		testenv.Attach(t, ns, consolIP(name)+"/24", mgmt, "mgmt")
		testenv.Bridge(t, ns, "br0")
		for i := 1; i <= nSvc; i++ {
			testenv.Tap(t, ns, fmt.Sprintf("ts%d", i), "br0")
		}
		underlay[ns] = consolIP(name)
		certs("issue", "--dir", c.certs, "--role", "hostd", "--name", name, "--host", consolIP(name))
		c.hosts[name] = testenv.StartHostd(t, name, ns, consolIP(name)+":7070",
			"capacity: {cpu: 2, memory: 1G}\nusage_window: 10s\nusage_interval: 1s\nusage_guest_interval: 3s\n"+migration,
			"--tls-cert", filepath.Join(c.certs, "hostd-"+name+".crt"),
			"--tls-key", filepath.Join(c.certs, "hostd-"+name+".key"),
			"--tls-ca", filepath.Join(c.certs, "ca.crt"), "--guest-timeout", "20s")
	}
	testenv.VXLAN(t, "br0", 79, underlay)
	client := testenv.NewNetNS(t, "cl")
	testenv.Attach(t, client, "10.79.0.250/24", first, "br0")
	c.coord = testenv.StartCoordIn(t, mgmt, t.TempDir(), c.ckDir, nil,
		"--tls-cert", filepath.Join(c.certs, "coord-coord.crt"), "--tls-key", filepath.Join(c.certs, "coord-coord.key"),
		"--tls-ca", filepath.Join(c.certs, "ca.crt"),
		"--lease", "8s", "--prepare-timeout", "25s", "--step-timeout", "30s", "--transfer-timeout", "90s")
	for _, name := range c.names {
		c.cli("hosts", "add", name, consolIP(name)+":7070")
	}
	c.initrd = testguest.Initrd(t, map[string]testguest.File{
		"/bin/svc":                 {Mode: 0o755, Data: []byte(svcScript)},
		"/etc/symvirt/rc.d/40-svc": {Mode: 0o755, Data: []byte(svcRC)},
	})
	return c, client
}

// consolMigrationConfig is hostd's migration_downtime_limit from
// $SYMVIRT_MIGRATION_DOWNTIME, by default 30 ms on QEMU 10 or later (whose
// TCG pre-copy is exact; SYMVIRT_QEMU names it) and QEMU's own before.
// $SYMVIRT_MIGRATION_KEEP_FRAMES=false turns off what a paused source
// passes on (hostd's migration_keep_frames), for a side-by-side run, and
// $SYMVIRT_MIGRATION_IDLE_THREAD and $SYMVIRT_MIGRATION_RESUME_BOOST set
// hostd's migration_idle_thread and migration_resume_boost (on by
// default; false and 0s turn them off), and
// $SYMVIRT_MIGRATION_RESUME_REALTIME its migration_resume_realtime.
func consolMigrationConfig(t *testing.T) string {
	out := ""
	downtime := os.Getenv("SYMVIRT_MIGRATION_DOWNTIME")
	if major, _, _ := strings.Cut(testguest.QemuVersion(t), "."); downtime == "" && len(major) > 1 {
		downtime = "30ms"
	}
	for key, env := range map[string]string{
		"migration_downtime_limit":  downtime,
		"migration_keep_frames":     os.Getenv("SYMVIRT_MIGRATION_KEEP_FRAMES"),
		"migration_idle_thread":     os.Getenv("SYMVIRT_MIGRATION_IDLE_THREAD"),
		"migration_resume_boost":    os.Getenv("SYMVIRT_MIGRATION_RESUME_BOOST"),
		"migration_resume_realtime": os.Getenv("SYMVIRT_MIGRATION_RESUME_REALTIME"),
	} {
		if env != "" {
			out += key + ": " + env + "\n"
		}
	}
	t.Logf("hostd's migration settings (QEMU %s): %q", testguest.QemuVersion(t), out)
	return out
}

func testenvCLI(t *testing.T, args ...string) (string, error) {
	out, err := exec.Command(testenv.Binary(t), args...).CombinedOutput()
	return string(out), err
}

// createService creates job svcN: one VM at 10.79.0.N on host, in
// anti-affinity group group.
func (c *cluster) createService(n int, host, group string) {
	job := fmt.Sprintf(`name: svc%d
anti_affinity: %s
vms:
  - name: svc%d
    host: %s
    spec:
      memory: 160M
      kernel: %s
      initrd: %s
      append: "console=ttyS0 quiet panic=-1 symvirt.agent=1 symvirt.name=svc%d symvirt.ip=10.79.0.%d/24"
      guest_channel: {type: virtio-serial}
      nics:
        - {id: net0, model: virtio-net-pci, backend: tap, tap: ts%d, mac: "52:54:00:79:00:%02x"}
`, n, group, n, host, c.kernel, c.initrd, n, n, n, n)
	f := filepath.Join(c.t.TempDir(), "job.yaml")
	os.WriteFile(f, []byte(job), 0o600)
	c.cli("jobs", "create", "-f", f)
}

// echoClient keeps one TCP connection to a service and asks it a line
// every 100 ms (more would keep eight TCG guests on two cores too busy to
// tell a spinning one apart), every 40 ms while VMs move (consolidateAsk:
// the gap it measures is the service's pause plus up to one interval); it
// records, per phase, the longest time between two answers and the
// longest round trip, and the first failure (a broken connection, a wrong
// answer, or 20 s without one).
type echoClient struct {
	addr  string
	mu    sync.Mutex
	phase int
	every time.Duration // between an answer and the next question
	gaps  map[int]time.Duration
	rtts  map[int]time.Duration
	// gapEnd is when the longest gap of a phase ended.
	gapEnd map[int]time.Time
	// times are when each answer came (the gap around a move is found
	// from them).
	times []time.Time
	// sent are when each answer's question was sent.
	sent  []time.Time
	err   error
	count int
}

func (e *echoClient) run(ns *testenv.NetNS, stop <-chan struct{}) {
	var conn net.Conn
	var err error
	for end := time.Now().Add(3 * time.Minute); time.Now().Before(end); time.Sleep(time.Second) {
		if conn, err = testenv.DialIn(ns, e.addr, 2*time.Second); err == nil {
			break
		}
	}
	if err != nil {
		e.fail(fmt.Errorf("dial %s: %w", e.addr, err))
		return
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	last, lastPhase := time.Now(), 0
	for i := 0; ; i++ {
		e.mu.Lock()
		every := cmp.Or(e.every, 100*time.Millisecond)
		e.mu.Unlock()
		select {
		case <-stop:
			return
		case <-time.After(every):
		}
		sent := time.Now()
		conn.SetDeadline(sent.Add(20 * time.Second))
		if _, err := fmt.Fprintf(conn, "%d\n", i); err != nil {
			e.fail(err)
			return
		}
		line, err := r.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != strconv.Itoa(i) {
			e.fail(fmt.Errorf("answer %d: %q, %v", i, line, err))
			return
		}
		now := time.Now()
		e.mu.Lock()
		// A gap that began in the phase before is that phase's ask
		// interval, not this one's.
		if e.count > 0 && lastPhase == e.phase && now.Sub(last) > e.gaps[e.phase] {
			e.gaps[e.phase] = now.Sub(last)
			e.gapEnd[e.phase] = now
		}
		e.rtts[e.phase] = max(e.rtts[e.phase], now.Sub(sent))
		e.count++
		e.times = append(e.times, now)
		e.sent = append(e.sent, sent)
		lastPhase = e.phase
		e.mu.Unlock()
		last = now
	}
}

func (e *echoClient) fail(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err == nil {
		e.err = err
	}
}

func (e *echoClient) answered() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.count
}

// consolidate runs `symvirt consolidate ARGS -o json` and decodes it.
func (c *cluster) consolidate(args ...string) (coord.ConsolidateReport, string, error) {
	out, err := c.coord.CLI(c.t, append(append([]string{"consolidate"}, args...), "-o", "json")...)
	var rep coord.ConsolidateReport
	if i := strings.Index(out, "{"); i >= 0 {
		json.NewDecoder(strings.NewReader(out[i:])).Decode(&rep)
	}
	return rep, out, err
}

// jobUsage returns every job's VMs' usage, per VM.
func (c *cluster) jobUsage() map[string]coord.JobInfo {
	var infos []coord.JobInfo
	json.Unmarshal([]byte(c.cli("jobs", "-o", "json")), &infos)
	out := map[string]coord.JobInfo{}
	for _, ji := range infos {
		out[ji.Name] = ji
	}
	return out
}

// waitUsage waits until ok holds for the jobs' usage (each hostd's window
// filled).
func (c *cluster) waitUsage(what string, timeout time.Duration, ok func(map[string]coord.JobInfo) bool) {
	c.t.Helper()
	var last map[string]coord.JobInfo
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(2 * time.Second) {
		if last = c.jobUsage(); ok(last) {
			return
		}
	}
	c.t.Fatalf("%s: not reached in %v; usage: %s", what, timeout, usageString(last))
}

func usageString(infos map[string]coord.JobInfo) string {
	var b strings.Builder
	for name, ji := range infos {
		for vm, u := range ji.Usage {
			fmt.Fprintf(&b, "%s/%s on %s: cpu %.2f mem %d MiB (%s, %.0f s); ", name, vm, ji.VMs[0].Host, u.CPU, u.Mem>>20, u.MemSource, u.WindowS)
		}
	}
	return b.String()
}

// hostsInUse is the set of hosts running a service.
func (c *cluster) hostsInUse(nSvc int) map[string][]string {
	out := map[string][]string{}
	for i := 1; i <= nSvc; i++ {
		job := fmt.Sprintf("svc%d", i)
		h := c.where(job)[job]
		out[h] = append(out[h], job)
	}
	return out
}

// FlexCapsule's scenario on real QEMU: service VMs, each answering a
// client over TCP at its own address, spread over four hosts whose VM
// networks are one VXLAN segment; `symvirt consolidate --apply --drain`
// packs them onto two hosts (pairs of services in one anti-affinity group
// keep them from sharing one) in one run of live migrations through the
// coordinator, one at a time (two at once on these two cores lengthened
// every moved client's gap), and cordons the two it emptied; every client
// kept its connection (its longest gap between answers is logged, and
// where the gap went), and every move ran its migration thread idle at the
// source and was boosted at the destination (hostd's migration_idle_thread
// and migration_resume_boost, on here). Then two
// services on one host start spinning: the host is above its high-water
// mark and consolidate scales out, to a third host (the services'
// anti-affinity partners fill the other one), taking back a drained host.
// The service VMs have 160 MiB: at 128 the test guest's kernel, its
// unpacked initramfs and guestd left so little that the guest's OOM killer
// took guestd now and then on this machine.
func TestConsolidateServicesLive(t *testing.T) {
	const nSvc = 8
	c, clientNS := consolCluster(t, nSvc)
	for n := 1; n <= nSvc; n++ {
		c.createService(n, consolHosts[(n-1)/2], fmt.Sprintf("g%d", (n-1)%4))
	}
	clients := startEchoClients(t, clientNS, nSvc)
	clients.waitAnswering(t, 4*time.Minute)
	c.waitUsage("every service measured", 2*time.Minute, func(m map[string]coord.JobInfo) bool {
		n := 0
		for _, ji := range m {
			for _, u := range ji.Usage {
				if u.MemSource == "guest" && u.WindowS >= 8 {
					n++
				}
			}
		}
		return n == nSvc
	})
	t.Logf("hosts before:\n%s", c.cli("hosts"))
	var hinfos []coord.HostInfo
	json.Unmarshal([]byte(c.cli("hosts", "-o", "json")), &hinfos)
	for _, hi := range hinfos {
		if u := hi.Usage; u == nil || u.CPUCapacity != 2 || u.MemCapacity != 1<<30 || u.VMs != 2 || u.Mem <= 0 {
			t.Errorf("hosts -o json: %s usage %+v, want 2 VMs on 2 cores and 1 GiB", hi.Name, hi.Usage)
		}
	}
	if text := c.cli("consolidate"); !strings.Contains(text, "would move 4 VMs, frees ") {
		t.Errorf("consolidate (a dry run by default):\n%s", text)
	}

	plan, out, err := c.consolidate("--plan")
	if err != nil || plan.Mode != "consolidate" || len(plan.Plan.Freed) != 2 || len(plan.Plan.Moves) != 4 {
		t.Fatalf("consolidate --plan: %v, want 4 moves freeing 2 hosts:\n%s", err, out)
	}
	clients.setPhase(1, consolidateAsk)
	start := time.Now()
	rep, out, err := c.consolidate("--apply", "--parallel", cmp.Or(os.Getenv("SYMVIRT_CONSOLIDATE_PARALLEL"), "1"), "--drain")
	t.Logf("consolidate --apply (%v):\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil || len(rep.Empty) != 2 || len(rep.Drained) != 2 || len(rep.Results) != 4 {
		t.Fatalf("consolidate --apply: %v", err)
	}
	inUse := c.hostsInUse(nSvc)
	if len(inUse) != 2 {
		t.Fatalf("after consolidate: services on %v, want 2 hosts", inUse)
	}
	time.Sleep(2 * time.Second)
	clients.check(t, "consolidate", 1)
	c.logMoveTimelines(rep.Results, clients)
	c.checkMoveTuning(rep.Results)
	clients.setPhase(1, 0)

	// Two services of one host start spinning.
	var burners []string
	for _, svcs := range inUse {
		burners = svcs[:2]
		break
	}
	// A lower high-water mark than the default: two spinning TCG guests
	// on this shared machine may not get two full cores between them.
	policy := []string{"--target", "0.5", "--high", "0.5"}
	c.burnUntilScaleOut(clientNS, clients, burners, policy)
	t.Logf("hosts with %v spinning:\n%s", burners, c.cli("hosts"))
	clients.setPhase(2, 0)
	rep, out, err = c.consolidate(append([]string{"--apply"}, policy...)...)
	t.Logf("consolidate --apply (scale out):\n%s", out)
	if err != nil || rep.Mode != "scale-out" || len(rep.Uncordoned) != 1 {
		t.Fatalf("scale out: %v", err)
	}
	if inUse := c.hostsInUse(nSvc); len(inUse) != 3 {
		t.Errorf("after the scale out: services on %v, want 3 hosts", inUse)
	}
	time.Sleep(2 * time.Second)
	clients.check(t, "scale out", 2)
	c.logMoveTimelines(rep.Results, clients)
	t.Logf("hosts after:\n%s", c.cli("hosts"))
}

// burnUntilScaleOut makes the burners spin and waits until consolidate
// with policy plans a scale out, and then until the hostds' window (10 s)
// holds nothing but the spin.
func (c *cluster) burnUntilScaleOut(ns *testenv.NetNS, clients echoClients, burners, policy []string) {
	t := c.t
	t.Helper()
	for _, b := range burners {
		conn, err := testenv.DialIn(ns, clients[b].addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(conn, "burn")
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		if l, err := bufio.NewReader(conn).ReadString('\n'); err != nil || l != "burn\n" {
			t.Fatalf("burn %s: %q %v", b, l, err)
		}
		conn.Close()
	}
	var since time.Time
	for end := time.Now().Add(2 * time.Minute); ; time.Sleep(2 * time.Second) {
		plan, out, err := c.consolidate(append([]string{"--plan"}, policy...)...)
		switch {
		case err != nil || plan.Mode != "scale-out":
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		}
		if !since.IsZero() && time.Since(since) > 12*time.Second {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("no scale out planned with %v spinning: %v\n%s\nusage: %s", burners, err, out, usageString(c.jobUsage()))
		}
	}
}

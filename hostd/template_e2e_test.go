package hostd_test

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// cloneHook runs in each clone once guestd took its new identity (the
// "clone" hook phase): it prints what must differ between clones, and
// writes 8 MiB of the clone's own memory in the background.
const cloneHook = `#!/bin/sh
[ "$1" = clone ] || exit 0
( dd if=/dev/urandom of=/tmp/clone-fill bs=1M count=8 ) </dev/null >/dev/null 2>&1 &
echo "symvirt-clone-state host=$(hostname) mid=$(cat /etc/machine-id) mac=$(cat /sys/class/net/eth0/address) boot=$(cat /proc/sys/kernel/random/boot_id) rnd=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/dev/console
`

var cloneStateRE = regexp.MustCompile(`symvirt-clone-state host=(\S+) mid=(\S+) mac=(\S+) boot=(\S+) rnd=([0-9a-f]+)`)

// templateGuest is the small test guest with guestd on virtio-serial, one
// virtio NIC (user networking) and the clone hook.
func templateGuest(t *testing.T, name string) hostd.Spec {
	kernel, _ := testguest.Paths(t)
	return hostd.Spec{
		Name: name, Memory: 256, VCPUs: 1, Kernel: kernel,
		Initrd: testguest.Initrd(t, map[string]testguest.File{
			"/etc/symvirt/hooks.d/50-clone-state": {Mode: 0o755, Data: []byte(cloneHook)}}),
		Append: "console=ttyS0 quiet panic=-1 symvirt.agent=1 symvirt.name=" + name,
		NICs:   []hostd.NIC{{ID: "net0", Model: "virtio-net-pci"}},
		Guest:  hostd.Channel{Type: "virtio-serial"},
	}
}

// smaps is a process's proportional set size (shared pages divided among
// the processes that map them) from /proc/PID/smaps_rollup, in bytes: in
// all, of anonymous pages (a clone's own writes, QEMU's heap and TCG
// code) and of shmem pages (the template file's, shared).
type smaps struct{ pss, anon, shmem int64 }

func (s smaps) String() string {
	return fmt.Sprintf("%s (anonymous %s, shmem %s)", mib(s.pss), mib(s.anon), mib(s.shmem))
}

func readSmaps(t *testing.T, pid int) smaps {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var s smaps
	fields := map[string]*int64{"Pss:": &s.pss, "Pss_Anon:": &s.anon, "Pss_Shmem:": &s.shmem}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fl := strings.Fields(sc.Text()); len(fl) == 3 && fields[fl[0]] != nil {
			kb, _ := strconv.ParseInt(fl[1], 10, 64)
			*fields[fl[0]] = kb << 10
		}
	}
	if s.pss == 0 {
		t.Fatalf("pid %d: no Pss in smaps_rollup", pid)
	}
	return s
}

func cloneCount() int {
	if n, err := strconv.Atoi(os.Getenv("SYMVIRT_TEMPLATE_CLONES")); err == nil && n >= 2 {
		return n
	}
	return 8
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// TestTemplateClones makes a template of the test guest, starts clones
// of it (the first from the template's pool of standby clones, the rest
// as the pool gives out: standby or started on request), and checks that
// they are each their own machine, share the template's memory and never
// write the template; it reports their time to ready and memory beside a
// cold boot of the same guest, in the same run.
func TestTemplateClones(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 10*time.Minute)
	tmpl, err := c.CreateTemplate(ctx, "small", templateGuest(t, "small"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template: booted to guestd ready in %s, device state %d bytes, RAM file %s", tmpl.Boot, tmpl.State.Size, tmpl.RAM.Path)
	if st, err := os.Stat(tmpl.RAM.Path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("template RAM file: %v %v", st, err)
	}
	pool := poolSize()
	if err := c.SetTemplatePool(ctx, "small", pool); err != nil {
		t.Fatal(err)
	}
	waitPool(t, c, pool)
	clones := startClones(t, c, cloneCount())
	if !clones[0].Standby {
		t.Errorf("clone c0 was not taken from the full pool")
	}
	checkCloneIdentities(t, h, clones)

	time.Sleep(2 * time.Second) // the clones' 8 MiB writes
	standbys := waitPool(t, c, pool)
	mem := cloneMemory(t, tmpl, clones, standbys)
	coldBoot, coldPSS := coldBoot(t, h)
	r := readiness(clones)
	all := mem.wrote + mem.sbWrote
	t.Logf("SUMMARY cold boot %s, QEMU PSS %s | %d clones (pool %d, %d taken from it): ready p50 %s p90 %s | PSS sum %s (clones %s + standby %s) = %.2fx one booted VM | guests wrote %s (clones %s, standbys %s), QEMUs' own %s (%s each) | (sum - all written) / booted VM = %.2fx (target 1.5x: sum %s <= %s); the %d clones alone (pool not counted) %.2fx; with the template file's unmapped pages %.2fx",
		coldBoot.Round(time.Millisecond), mib(coldPSS), len(clones), pool, r.standby, r.p50, r.p90,
		mib(mem.sum), mib(mem.clones), mib(mem.standby), float64(mem.sum)/float64(coldPSS),
		mib(all), mib(mem.wrote), mib(mem.sbWrote), mib(mem.own), mib(mem.own/int64(len(clones)+len(standbys))),
		float64(mem.sum-all)/float64(coldPSS), mib(mem.sum), mib(coldPSS*3/2+all),
		len(clones), float64(mem.clones-mem.wrote)/float64(coldPSS), float64(mem.sum-all+mem.tmplUnmapped)/float64(coldPSS))

	// The clones wrote their memory; the template's file is as it was.
	if sum, err := hostd.FileSHA256(tmpl.RAM.Path); err != nil || sum != tmpl.RAMSHA256 {
		t.Fatalf("template RAM file changed by its clones: sha256 %s, was %s (%v)", sum, tmpl.RAMSHA256, err)
	}
	// An emptied pool stops its standby clones.
	if err := c.SetTemplatePool(ctx, "small", 0); err != nil {
		t.Fatal(err)
	}
	for _, pid := range standbys {
		if qemu.Alive(pid) {
			t.Errorf("standby clone pid %d still runs after its pool was emptied", pid)
		}
	}
	templateRefusesSwaps(t, h, tmpl)
}

// poolSize is the template's pool of standby clones in the test
// (SYMVIRT_TEMPLATE_POOL, default 2).
func poolSize() int {
	if n, err := strconv.Atoi(os.Getenv("SYMVIRT_TEMPLATE_POOL")); err == nil && n >= 1 {
		return n
	}
	return 2
}

// waitPool waits until the template "small" has size standby clones and
// returns their PIDs.
func waitPool(t *testing.T, c *hostd.Client, size int) []int {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ts, err := c.Templates(ctxT(t, time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) == 1 && ts[0].Pool != nil && len(ts[0].Pool.PIDs) >= size {
			return ts[0].Pool.PIDs
		}
		if time.Now().After(deadline) {
			t.Fatalf("template pool never filled to %d: %+v", size, ts)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startClones requests n clones of "small", one after the other.
func startClones(t *testing.T, c *hostd.Client, n int) []hostd.CloneResult {
	ctx := ctxT(t, 10*time.Minute)
	clones := make([]hostd.CloneResult, n)
	for i := range n {
		res, err := c.Clone(ctx, hostd.CloneRequest{Template: "small", Name: fmt.Sprintf("c%d", i)})
		if err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		clones[i] = res
		t.Logf("clone %s: ready in %s, standby %v (qemu up or taken %s, state loaded and running %s, guestd %s of which handshake %s)",
			res.VM, res.Ready, res.Standby, res.Start, res.Load, res.Guest, res.Handshake)
	}
	r := readiness(clones)
	t.Logf("%d clones: request to guestd ready p50 %s, p90 %s, max %s; %d from the pool (p50 %s), %d started on request (p50 %s) (target p50 150 ms, not asserted)",
		n, r.p50, r.p90, r.max, r.standby, r.standbyP50, n-r.standby, r.coldP50)
	return clones
}

type readyStats struct {
	p50, p90, max, standbyP50, coldP50 time.Duration
	standby                            int
}

func readiness(clones []hostd.CloneResult) readyStats {
	var all, sb, cold []time.Duration
	for _, c := range clones {
		all = append(all, c.Ready)
		if c.Standby {
			sb = append(sb, c.Ready)
		} else {
			cold = append(cold, c.Ready)
		}
	}
	pct := func(d []time.Duration, p int) time.Duration {
		if len(d) == 0 {
			return 0
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[(len(d)-1)*p/100]
	}
	return readyStats{p50: pct(all, 50), p90: pct(all, 90), max: pct(all, 100),
		standbyP50: pct(sb, 50), coldP50: pct(cold, 50), standby: len(sb)}
}

// checkCloneIdentities: each clone has the hostname and MAC hostd gave
// it, and no two share a hostname, machine-id, MAC, boot_id or the first
// 64 bytes of /dev/urandom.
func checkCloneIdentities(t *testing.T, h *testenv.Hostd, clones []hostd.CloneResult) {
	states := make([][]string, len(clones))
	for i, cl := range clones {
		m := cloneStateRE.FindStringSubmatch(waitLog(t, serialLog(h, cl.VM), cloneStateRE, time.Minute))
		states[i] = m[1:]
		if m[1] != cl.VM || m[3] != cl.MACs["net0"] {
			t.Errorf("clone %s: hostname %s, MAC %s in the guest; want %s, %s", cl.VM, m[1], m[3], cl.VM, cl.MACs["net0"])
		}
	}
	for k, what := range []string{"hostname", "machine-id", "MAC", "boot_id", "/dev/urandom"} {
		seen := map[string]string{}
		for i, cl := range clones {
			if other, dup := seen[states[i][k]]; dup {
				t.Errorf("clones %s and %s have the same %s %s", other, cl.VM, what, states[i][k])
			}
			seen[states[i][k]] = cl.VM
		}
	}
	t.Logf("clone c0: %v; c1: %v", states[0], states[1])
	if data, err := os.ReadFile(serialLog(h, "c0")); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "CLONE") || strings.Contains(l, "hook ran") || strings.Contains(l, "host connected") {
				t.Logf("c0 console: %s", strings.TrimSpace(l))
			}
		}
	}
}

// cloneMem is the host's memory for the clones: the sum of PSS of their
// QEMUs and of the standby clones waiting in the pool; what the guests
// wrote (wrote: the requested clones', sbWrote: the standbys'), which is
// the anonymous pages of each one's private mapping of the template's
// RAM file, the guest RAM pages it dirtied and so holds a copy of its
// own; shared, the PSS of the template file's pages they map untouched;
// own, the rest, QEMU's own memory; and the template file's pages no
// QEMU maps (in /dev/shm, in no one's PSS).
type cloneMem struct{ sum, clones, standby, wrote, sbWrote, shared, own, tmplUnmapped int64 }

// cloneMemory logs each clone's memory by part and the totals.
func cloneMemory(t *testing.T, tmpl hostd.Template, clones []hostd.CloneResult, standbys []int) cloneMem {
	var m cloneMem
	parts := memParts{}
	one := func(name string, pid int) memParts {
		p := readMemParts(t, pid, tmpl.RAM.Path, int(tmpl.Spec.Memory))
		s := readSmaps(t, pid)
		own := s.pss - p[partGuest]
		m.sum, m.own, m.shared = m.sum+s.pss, m.own+own, m.shared+p[partGuest]-p[partGuestW]
		t.Logf("%s: PSS %s = QEMU's own %s (TCG %s, heap %s, other anonymous %s, files %s) + template pages shared %s + guest wrote %s",
			name, mib(s.pss), mib(own), mib(p[partTCG]), mib(p[partHeap]), mib(p[partAnon]), mib(p[partFiles]),
			mib(p[partGuest]-p[partGuestW]), mib(p[partGuestW]))
		parts.add(p)
		return p
	}
	for _, cl := range clones {
		m.wrote += one(cl.VM, cl.PID)[partGuestW]
		cloneHoldsNoKernel(t, cl.PID)
	}
	m.clones = m.sum
	for i, pid := range standbys {
		m.sbWrote += one(fmt.Sprintf("standby %d", i), pid)[partGuestW]
		cloneHoldsNoKernel(t, pid)
	}
	m.standby = m.sum - m.clones
	n := int64(len(clones) + len(standbys))
	t.Logf("%d clones and %d standbys: PSS by part: %s", len(clones), len(standbys), parts)
	t.Logf("clone c0's mappings over 512 KiB (guest RAM aside):%s", bigMappings(t, clones[0].PID, tmpl.RAM.Path))
	t.Logf("per QEMU (mean of %d): PSS %s = QEMU's own %s + template pages shared %s + guest wrote %s (clones %s each, standbys %s each)",
		n, mib(m.sum/n), mib(m.own/n), mib(m.shared/n), mib((m.wrote+m.sbWrote)/n),
		mib(m.wrote/int64(len(clones))), mib(m.sbWrote/int64(max(1, len(standbys)))))
	st, _ := os.Stat(tmpl.RAM.Path)
	file := st.Sys().(*syscall.Stat_t).Blocks * 512
	m.tmplUnmapped = max(0, file-m.shared)
	t.Logf("template RAM file holds %s, of which %s mapped by no clone", mib(file), mib(m.tmplUnmapped))
	return m
}

// coldBoot boots the same guest without a template, side by side: its
// time to the guest's ready marker and its QEMU's PSS.
func coldBoot(t *testing.T, h *testenv.Hostd) (time.Duration, int64) {
	cold := templateGuest(t, "cold")
	off := false
	cold.SharedMemory = &off
	start := time.Now()
	info, err := h.Client().Create(ctxT(t, 3*time.Minute), cold, true)
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, serialLog(h, "cold"), regexp.MustCompile(`symvirt-guest-ready`), 2*time.Minute)
	took := time.Since(start)
	time.Sleep(time.Second)
	s := readSmaps(t, info.PID)
	t.Logf("cold-booted VM: QEMU PSS %s; by part: %s", s, readMemParts(t, info.PID, "", int(cold.Memory)))
	return took, s.pss
}

// templateRefusesSwaps: a RAM file put in the template's place, or a
// device state changed, is refused, and the clone is gone; a removed
// template leaves nothing behind.
func templateRefusesSwaps(t *testing.T, h *testenv.Hostd, tmpl hostd.Template) {
	c := h.Client()
	ctx := ctxT(t, 2*time.Minute)
	ram := tmpl.RAM.Path
	if err := os.Rename(ram, ram+".orig"); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(ram, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(int64(int(tmpl.Spec.Memory)) << 20)
	f.Close()
	if _, err := c.Clone(ctx, hostd.CloneRequest{Template: tmpl.Name, Name: "swapped"}); !errors.Is(err, hostd.ErrRAMFile) {
		t.Fatalf("clone of a template whose RAM file was replaced: %v", err)
	}
	os.Remove(ram)
	os.Rename(ram+".orig", ram)

	state := filepath.Join(h.StateDir, "templates", tmpl.Name, "state")
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	os.WriteFile(state, data, 0o600)
	if _, err := c.Clone(ctx, hostd.CloneRequest{Template: tmpl.Name, Name: "tampered"}); !errors.Is(err, hostd.ErrChecksum) {
		t.Fatalf("clone of a template whose device state was changed: %v", err)
	}
	if _, err := c.Status(ctx, "tampered"); !errors.Is(err, hostd.ErrNotFound) {
		t.Fatalf("the failed clone is still there: %v", err)
	}
	if err := c.DeleteTemplate(ctx, tmpl.Name); err != nil {
		t.Fatal(err)
	}
	if ts, err := c.Templates(ctx); err != nil || len(ts) != 0 {
		t.Fatalf("templates after rm: %v %v", ts, err)
	}
	if _, err := os.Stat(ram); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("template RAM file after rm: %v", err)
	}
}

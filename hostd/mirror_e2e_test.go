package hostd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pausewatch"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// The guest's disk pattern: generation n goes to block n%64 of 4 KiB,
// the blocks 16 MiB apart from 1 GiB on (the disk is 2 GiB), each written
// with fsync before the next. A block holds a header naming its index and
// generation and a filler derived from both, so a torn, misplaced or stale
// block shows; and since the generations go round the blocks in order,
// the newest generation G on the disk says what every block must hold
// (the newest n <= G with n%64 == i): a write lost in the move shows too.
const (
	patternBlocks = 64
	patternBase   = 1 << 30
	patternStride = 16 << 20
	diskSize      = 2 << 30
)

const patternRC = `#!/bin/sh
( n=0; while :; do
    i=$((n % 64))
    { echo "symvirt-pattern blk=$i gen=$n"; yes "$i:$n" | head -c 3968; } |
      dd of=/dev/vda bs=4096 seek=$((262144 + i*4096)) count=1 iflag=fullblock conv=sync,notrunc,fsync 2>/dev/null
    [ $((n % 16)) -eq 0 ] && echo "symvirt-gen $n"
    n=$((n+1))
  done ) </dev/null >/dev/console 2>&1 &
`

var genRE = regexp.MustCompile(`symvirt-gen (\d+)`)

// patternBlock is what block i holds at generation n.
func patternBlock(i, n int) []byte {
	b := make([]byte, 4096)
	head := fmt.Sprintf("symvirt-pattern blk=%d gen=%d\n", i, n)
	fill := strings.Repeat(fmt.Sprintf("%d:%d\n", i, n), 3968/len(fmt.Sprintf("%d:%d\n", i, n))+1)[:3968]
	copy(b, head+fill)
	return b
}

// verifyPattern reads the pattern from a qcow2 image (the VM may hold it,
// paused: its writes are flushed) and returns the newest generation.
func verifyPattern(t *testing.T, image string) int {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "check.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", image, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v\n%s", image, err, out)
	}
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer os.Remove(raw)
	gens, newest := make([]int, patternBlocks), -1
	for i := range patternBlocks {
		buf := make([]byte, 4096)
		if _, err := f.ReadAt(buf, int64(patternBase+i*patternStride)); err != nil {
			t.Fatalf("%s: block %d: %v", image, i, err)
		}
		gens[i] = -1
		if bytes.Count(buf, []byte{0}) == len(buf) {
			continue
		}
		var bi, n int
		if _, err := fmt.Sscanf(string(buf), "symvirt-pattern blk=%d gen=%d\n", &bi, &n); err != nil || bi != i || !bytes.Equal(buf, patternBlock(i, n)) {
			t.Fatalf("%s: block %d is not a pattern block of its own: %q", image, i, buf[:64])
		}
		gens[i], newest = n, max(newest, n)
	}
	for i, g := range gens {
		want := newest - ((newest-i)%patternBlocks+patternBlocks)%patternBlocks
		if want < 0 {
			want = -1
		}
		if g != want {
			t.Errorf("%s: block %d holds generation %d, want %d (newest %d): a write was lost", image, i, g, want, newest)
		}
	}
	return newest
}

// mirrorPair is two hostds in their own namespaces with mutual TLS and
// disk directories of their own (each one's state directory; the source
// disk is in the test's temporary directory, which the destination never
// opens).
type mirrorPair struct {
	certs    string
	src, dst *testenv.Hostd
	srcNS    *testenv.NetNS
}

func newMirrorPair(t *testing.T) mirrorPair {
	testenv.RequireRoot(t)
	bin := testenv.Binary(t)
	p := mirrorPair{certs: t.TempDir()}
	run := func(args ...string) {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("symvirt %v: %v\n%s", args, err, out)
		}
	}
	run("certs", "init", "--dir", p.certs)
	run("certs", "issue", "--dir", p.certs, "--role", "coord", "--name", "coord")
	a, b := testenv.NewNetNS(t, "ma"), testenv.NewNetNS(t, "mb")
	testenv.Link(t, a, b, "10.77.9.1/24", "10.77.9.2/24")
	start := func(name string, ns *testenv.NetNS, ip string) *testenv.Hostd {
		run("certs", "issue", "--dir", p.certs, "--role", "hostd", "--name", name, "--host", ip)
		return testenv.StartHostd(t, name, ns, ip+":7070", "",
			"--tls-cert", filepath.Join(p.certs, "hostd-"+name+".crt"),
			"--tls-key", filepath.Join(p.certs, "hostd-"+name+".key"), "--tls-ca", filepath.Join(p.certs, "ca.crt"))
	}
	p.src, p.dst = start("a", a, "10.77.9.1"), start("b", b, "10.77.9.2")
	p.srcNS = a
	run("certs", "issue", "--dir", p.certs, "--role", "hostd", "--name", "c", "--host", "10.77.9.3")
	return p
}

// startPatternVM creates a 2 GiB sparse qcow2 (preload: a region at
// 0-preload written with 0xab from the host first) and a VM on the source
// writing the pattern on it; it returns the image once the guest wrote
// every block at least twice.
func (p mirrorPair) startPatternVM(t *testing.T, ctx context.Context, name string, preload int) string {
	t.Helper()
	disk := filepath.Join(t.TempDir(), name+".qcow2")
	testenv.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", disk, fmt.Sprint(diskSize))
	if preload > 0 {
		testenv.Run(t, "qemu-io", "-c", fmt.Sprintf("write -P 0xab 0 %d", preload), disk)
	}
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/30-pattern": {Mode: 0o755, Data: []byte(patternRC)},
		"/etc/symvirt/rc.d/41-tick":    {Mode: 0o755, Data: []byte(pausewatch.TickScript)},
		"/bin/tick":                    {Src: pausewatch.TickBinary(t), Mode: 0o755}})
	spec := hostd.Spec{Name: name, Memory: 256, VCPUs: 1, Kernel: kernel, Initrd: initrd,
		Append: "console=ttyS0 quiet panic=-1 symvirt.tickperiod=5000", Guest: hostd.Channel{Type: "none"},
		Disks: []hostd.Disk{{ID: "root", Path: disk, Format: "qcow2"}}}
	if _, err := p.src.Client().Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	waitGen(t, serialLog(p.src, name), 2*patternBlocks, 3*time.Minute)
	return disk
}

// waitGen waits for the guest to report generation min on its console.
func waitGen(t *testing.T, log string, min int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if g := numbersIn(log, genRE); len(g) > 0 && g[len(g)-1] >= min {
			return g[len(g)-1]
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(log)
			t.Fatalf("%s: the guest did not reach generation %d in %s:\n%s", log, min, timeout, data[max(0, len(data)-1500):])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (p mirrorPair) migrate(ctx context.Context, t *testing.T, name string) (hostd.MigrateResult, error) {
	return p.src.Client().Migrate(ctx, name, hostd.MigrateOptions{To: p.dst.Addr(), NoGuest: true, CopyStorage: true,
		Grant: coordGrant(t, p.certs, name, "a", "b")}, nil)
}

// switchWatch measures the guest's pause across a migration on the
// host's clock: the last growth of the source's console (the guest's
// 5 ms tick) to the first output on the destination's.
type switchWatch struct {
	done             chan struct{}
	srcLast, dstSeen time.Time
}

func watchSwitch(src, dst string) *switchWatch {
	w := &switchWatch{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var size int64
		for end := time.Now().Add(20 * time.Minute); time.Now().Before(end); time.Sleep(time.Millisecond) {
			now := time.Now()
			if st, err := os.Stat(src); err == nil && st.Size() != size {
				size, w.srcLast = st.Size(), now
			}
			if st, err := os.Stat(dst); err == nil && st.Size() > 0 {
				w.dstSeen = now
				return
			}
		}
	}()
	return w
}

// pause waits for the destination's first output and returns the gap.
func (w *switchWatch) pause(t *testing.T) time.Duration {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the migrated guest printed nothing on the destination's console")
	}
	if w.dstSeen.IsZero() || w.srcLast.IsZero() {
		t.Fatal("no switch-over seen on the consoles")
	}
	return w.dstSeen.Sub(w.srcLast)
}

// TestMigrateCopyStorage: a VM on a 2 GiB sparse qcow2 disk in the source
// host's own directory, on which the guest keeps writing its pattern (a
// checkpoint first puts the disk on an overlay chain), migrates live with --copy-storage between two hostds (mutual TLS) that
// share no disk directory. The destination runs it on a disk of its own
// (the source's image is moved away right after), the guest writes on
// through the move and after it, and the pattern on the destination's
// disk is whole: no torn, misplaced or lost write. The guest's pause (its
// console on the host's clock) and QEMU's figures are logged.
func TestMigrateCopyStorage(t *testing.T) {
	p := newMirrorPair(t)
	ctx := ctxT(t, 15*time.Minute)
	const preload = 256 << 20 // data for the mirror to copy while the guest writes
	disk := p.startPatternVM(t, ctx, "cs1", preload)
	// A checkpoint first: the disk is a chain (its root under an overlay)
	// and the mirror must copy all of it.
	ck, err := p.src.Client().Checkpoint(ctx, "cs1", hostd.CheckpointOptions{Dir: filepath.Join(t.TempDir(), "ck"), Live: true, NoGuest: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := mustStatus(t, p.src.Client(), "cs1"); st.Spec.Disks[0].Path == disk {
		t.Fatalf("after the checkpoint the disk is not on an overlay: %+v (checkpoint %+v)", st.Spec.Disks, ck)
	}
	before := waitGen(t, serialLog(p.src, "cs1"), 0, time.Second)
	w := watchSwitch(serialLog(p.src, "cs1"), serialLog(p.dst, "cs1"))
	start := time.Now()
	res, err := p.migrate(ctx, t, "cs1")
	if err != nil {
		t.Fatalf("migrate --copy-storage: %v\nsource:\n%s", err, p.src.Logs())
	}
	took := time.Since(start)
	pause := w.pause(t)
	// The source's disk (its root) goes: the destination must not need it.
	if err := os.Rename(disk, disk+".gone"); err != nil {
		t.Fatal(err)
	}
	st := mustStatus(t, p.dst.Client(), "cs1")
	if st.State != "running" {
		t.Fatalf("destination: %s", st.State)
	}
	own := filepath.Join(p.dst.Layout().VM("cs1"), "disk-root.qcow2")
	if _, err := os.Stat(own); err != nil {
		t.Fatalf("the destination's disk copy: %v", err)
	}
	firstHere := waitGen(t, serialLog(p.dst, "cs1"), 0, time.Minute)
	after := waitGen(t, serialLog(p.dst, "cs1"), before+2*patternBlocks, 3*time.Minute)
	if _, err := p.dst.Client().Action(ctx, "cs1", "pause"); err != nil {
		t.Fatal(err)
	}
	newest := verifyPattern(t, own)
	if newest < after {
		t.Fatalf("the destination's disk holds generation %d, the guest printed %d", newest, after)
	}
	verifyPreload(t, own, preload)
	t.Logf("migrate --copy-storage of a 2 GiB qcow2: %s in all (QEMU: total %s, downtime %s, %d bytes of RAM); "+
		"guest pause at the switch-over (console, host clock) %s; pattern whole at generation %d (%d when the move began, %d first printed after it)",
		took.Round(time.Millisecond), res.TotalTime, res.Downtime, res.Transferred, pause.Round(time.Millisecond), newest, before, firstHere)
}

// TestMigrateCopyStorageDestinationDies: the destination's QEMU is killed
// while the disk is being mirrored (512 MiB of data on it): the migration
// fails, the source runs on and keeps writing, its disk holds the
// preloaded data and a whole pattern, and the destination dropped the VM
// with its disk copy (the operation's CancelMigrate).
func TestMigrateCopyStorageDestinationDies(t *testing.T) {
	p := newMirrorPair(t)
	ctx := ctxT(t, 15*time.Minute)
	const preload = 512 << 20
	disk := p.startPatternVM(t, ctx, "cs2", preload)
	copyDisk := filepath.Join(p.dst.Layout().VM("cs2"), "disk-root.qcow2")
	killed := make(chan error, 1)
	go func() {
		// Mid-mirror: once the copy holds 64 MiB.
		for end := time.Now().Add(5 * time.Minute); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if st, err := os.Stat(copyDisk); err == nil && st.Size() > 64<<20 {
				testenv.KillUnder(p.dst.Layout().VM("cs2"))
				killed <- nil
				return
			}
		}
		killed <- fmt.Errorf("the destination's copy never reached 64 MiB")
	}()
	_, err := p.migrate(ctx, t, "cs2")
	if kerr := <-killed; kerr != nil {
		t.Fatal(kerr)
	}
	if err == nil {
		t.Fatal("the migration succeeded although its destination died mid-mirror")
	}
	t.Logf("migration failed as it must: %v", err)
	if st := mustStatus(t, p.src.Client(), "cs2"); st.State != "running" {
		t.Fatalf("source after the failed migration: %s", st.State)
	}
	gen := waitGen(t, serialLog(p.src, "cs2"), 0, time.Second)
	waitGen(t, serialLog(p.src, "cs2"), gen+patternBlocks, 3*time.Minute)
	if _, err := p.dst.Client().Status(ctx, "cs2"); err == nil {
		t.Error("the destination still knows the VM")
	}
	if _, err := os.Stat(p.dst.Layout().VM("cs2")); !os.IsNotExist(err) {
		t.Errorf("the destination's VM directory (its disk copy) is still there: %v", err)
	}
	if _, err := p.src.Client().Action(ctx, "cs2", "pause"); err != nil {
		t.Fatal(err)
	}
	verifyPattern(t, disk)
	verifyPreload(t, disk, preload)
}

// verifyPreload checks that image holds 0xab over its first n bytes.
func verifyPreload(t *testing.T, image string, n int) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-r", "-U", "-c", fmt.Sprintf("read -P 0xab 0 %d", n), image).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("Pattern verification failed")) {
		t.Fatalf("%s: the preloaded data is not there: %v\n%s", image, err, out)
	}
}

// copyIncoming asks the destination for an incoming storage migration as
// hostd a would (mutual TLS from its namespace, the coordinator's grant).
func (p mirrorPair) copyIncoming(t *testing.T, spec hostd.Spec, disks []hostd.CopyDisk) hostd.IncomingResponse {
	t.Helper()
	cfg, err := pki.ClientConfig(filepath.Join(p.certs, "hostd-a.crt"), filepath.Join(p.certs, "hostd-a.key"),
		filepath.Join(p.certs, "ca.crt"), pki.RoleHostd)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(hostd.IncomingRequest{Spec: spec, CopyStorage: disks, Grant: coordGrant(t, p.certs, spec.Name, "a", "b")})
	resp, err := testenv.HTTPClientIn(p.srcNS, cfg).Post("https://10.77.9.2:7070/v1/incoming", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var inc hostd.IncomingResponse
	if err := json.NewDecoder(resp.Body).Decode(&inc); err != nil || resp.StatusCode != 200 || inc.NBD == "" {
		t.Fatalf("incoming storage migration: %s %+v %v", resp.Status, inc, err)
	}
	return inc
}

// nbdGreeting connects to addr from the source's namespace (TLS with the
// certificate named, if any), presents token, and reports whether QEMU's
// NBD server greeted: whether the connection reached it.
func (p mirrorPair) nbdGreeting(t *testing.T, addr, cert, token string) bool {
	t.Helper()
	c, err := testenv.DialIn(p.srcNS, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if cert != "" {
		cfg, err := pki.ClientConfig(filepath.Join(p.certs, cert+".crt"), filepath.Join(p.certs, cert+".key"),
			filepath.Join(p.certs, "ca.crt"), pki.RoleHostd)
		if err != nil {
			t.Fatal(err)
		}
		host, _, _ := net.SplitHostPort(addr)
		cfg.ServerName = host
		tc := tls.Client(c, cfg)
		if tc.Handshake() != nil {
			return false
		}
		c = tc
	}
	if _, err := io.WriteString(c, token); err != nil {
		return false
	}
	greeting := make([]byte, 8)
	_, err = io.ReadFull(c, greeting)
	return err == nil && string(greeting) == "NBDMAGIC"
}

// TestCopyStorageExportRefusesOthers mounts the attacks on a destination
// that waits with its disk exported for a storage migration: an NBD
// client writing in the clear (qemu-io nbd://), a plain connection that
// knows the token, another hostd's certificate with the token, and the
// source's own certificate with a wrong token reach no NBD server, and
// the exported disk holds no byte of theirs. The source's certificate
// with the token is greeted by QEMU's NBD server (the refusals came from
// the credentials); cancelled, the destination drops the disk copy.
func TestCopyStorageExportRefusesOthers(t *testing.T) {
	p := newMirrorPair(t)
	ctx := ctxT(t, 5*time.Minute)
	kernel, _ := testguest.Paths(t)
	spec := hostd.Spec{Name: "ex1", Memory: 64, VCPUs: 1, Kernel: kernel, Append: "console=ttyS0 quiet",
		Guest: hostd.Channel{Type: "none"}, Disks: []hostd.Disk{{ID: "root", Path: "/nonexistent/ex1.qcow2", Format: "qcow2"}}}
	inc := p.copyIncoming(t, spec, []hostd.CopyDisk{{ID: "root", Format: "qcow2", Size: 64 << 20}})
	addr := strings.TrimPrefix(inc.NBD, "tcp:")
	image := filepath.Join(p.dst.Layout().VM("ex1"), "disk-root.qcow2")
	out, err := exec.Command("ip", "netns", "exec", p.srcNS.Name, "qemu-io", "-f", "raw",
		"-c", "write -P 0x66 0 64k", "nbd://"+addr+"/root").CombinedOutput()
	t.Logf("qemu-io nbd://%s/root in the clear: %v: %s", addr, err, bytes.TrimSpace(out))
	wrong := strings.Repeat("0", len(inc.NBDToken))
	for what, try := range map[string][2]string{
		"plain with the token":             {"", inc.NBDToken},
		"hostd c with the token":           {"hostd-c", inc.NBDToken},
		"the source with a wrong token":    {"hostd-a", wrong},
		"the source without a whole token": {"hostd-a", inc.NBDToken[:8]},
	} {
		if p.nbdGreeting(t, addr, try[0], try[1]) {
			t.Errorf("%s: reached QEMU's NBD server", what)
		}
	}
	if out, err := exec.Command("qemu-io", "-r", "-U", "-c", "read -P 0 0 64k", image).CombinedOutput(); err != nil ||
		bytes.Contains(out, []byte("Pattern verification failed")) {
		t.Fatalf("the exported disk was written: %v\n%s", err, out)
	}
	if !p.nbdGreeting(t, addr, "hostd-a", inc.NBDToken) {
		t.Fatal("the source with its token was not greeted by the NBD server")
	}
	if err := p.dst.Client().AbortIncoming(ctx, "ex1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.dst.Layout().VM("ex1")); !os.IsNotExist(err) {
		t.Errorf("the cancelled destination kept its disk copy: %v", err)
	}
}

//go:build linux && amd64

package taint

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// requireBPF skips without root or kernel BTF, and fails instead when
// SYMVIRT_REQUIRE_QEMU=1 (the full suite must not skip silently).
func requireBPF(t *testing.T) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root to load eBPF programs and create network namespaces"
	} else if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		why = "needs kernel BTF (/sys/kernel/btf/vmlinux)"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs ip (iproute2)"
	}
	if why == "" {
		return
	}
	if os.Getenv("SYMVIRT_REQUIRE_QEMU") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func openTracker(t *testing.T, opts Options) *Tracker {
	t.Helper()
	requireBPF(t)
	tr, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return tr
}

// ---- network namespace standing for the world outside the machine ----

type outside struct {
	ns     string
	hostIP netip.Addr // our side of the veth
	peer   netip.Addr // inside the namespace
	peer2  netip.Addr // a second address inside the namespace
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newOutside creates a network namespace joined to ours by a veth pair, on
// a free 10.99.N.0/24.
func newOutside(t *testing.T) *outside {
	t.Helper()
	used, _ := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	var subnet int
	for range 100 {
		n, _ := rand.Int(rand.Reader, big.NewInt(50))
		subnet = 200 + int(n.Int64())
		if !bytes.Contains(used, []byte(fmt.Sprintf("10.99.%d.", subnet))) {
			break
		}
	}
	id := randHex(3)
	o := &outside{
		ns:     "svtaint-" + id,
		hostIP: netip.MustParseAddr(fmt.Sprintf("10.99.%d.1", subnet)),
		peer:   netip.MustParseAddr(fmt.Sprintf("10.99.%d.2", subnet)),
		peer2:  netip.MustParseAddr(fmt.Sprintf("10.99.%d.3", subnet)),
	}
	hostIf, nsIf := "svth"+id, "svtn"+id
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", o.ns).Run()
		exec.Command("ip", "link", "del", hostIf).Run()
	})
	run(t, "ip", "netns", "add", o.ns)
	run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	run(t, "ip", "link", "set", nsIf, "netns", o.ns)
	run(t, "ip", "addr", "add", o.hostIP.String()+"/24", "dev", hostIf)
	run(t, "ip", "link", "set", hostIf, "up")
	run(t, "ip", "-n", o.ns, "addr", "add", o.peer.String()+"/24", "dev", nsIf)
	run(t, "ip", "-n", o.ns, "addr", "add", o.peer2.String()+"/24", "dev", nsIf)
	run(t, "ip", "-n", o.ns, "link", "set", nsIf, "up")
	run(t, "ip", "-n", o.ns, "link", "set", "lo", "up")
	return o
}

func (o *outside) addr(a netip.Addr, port int) string {
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// ---- helper processes ----

type agent struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   string
	lines int
	pid   int
}

var agentSeq atomic.Int32

// startAgent starts a helper process, inside network namespace ns if not
// empty, with files as its fds 3, 4, ...
func startAgent(t *testing.T, name, ns string, files ...*os.File) *agent {
	t.Helper()
	dir := t.TempDir()
	a := &agent{t: t, name: name, out: filepath.Join(dir, fmt.Sprintf("agent%d.out", agentSeq.Add(1)))}
	args := []string{os.Args[0], "-test.run=^TestHelperProcess$"}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	a.cmd = exec.Command(args[0], args[1:]...)
	a.cmd.Env = append(os.Environ(), helperEnv+"=agent", helperOutEnv+"="+a.out)
	a.cmd.ExtraFiles = files
	logf, err := os.Create(a.out + ".log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.stdin.Close()
		done := make(chan struct{})
		go func() { a.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			a.cmd.Process.Kill()
			<-done
		}
	})
	pid, err := strconv.Atoi(a.do("pid"))
	if err != nil {
		t.Fatal(err)
	}
	a.pid = pid
	return a
}

func (a *agent) send(cmd string) {
	a.t.Helper()
	if _, err := io.WriteString(a.stdin, cmd+"\n"); err != nil {
		a.t.Fatalf("%s: send %q: %v", a.name, cmd, err)
	}
}

// wait returns the next answer, failing the test on "err" or after 15s.
func (a *agent) wait() string {
	a.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(a.out)
		lines := strings.Split(string(b), "\n")
		if len(lines)-1 > a.lines { // the last element follows the final newline
			l := lines[a.lines]
			a.lines++
			if rest, ok := strings.CutPrefix(l, "ok"); ok {
				return strings.TrimSpace(rest)
			}
			a.t.Fatalf("%s: %s", a.name, l)
		}
		time.Sleep(5 * time.Millisecond)
	}
	log, _ := os.ReadFile(a.out + ".log")
	a.t.Fatalf("%s: no answer in 15s; log:\n%s", a.name, log)
	return ""
}

func (a *agent) do(cmd string) string {
	a.t.Helper()
	a.send(cmd)
	return a.wait()
}

// in lets a subtest use an agent that its parent test started.
func (a *agent) in(t *testing.T) *agent {
	parent := a.t
	a.t = t
	t.Cleanup(func() { a.t = parent })
	return a
}

// ---- assertions ----

func waitTainted(t *testing.T, tr *Tracker, who string, pid int) Taint {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if tt, ok := tr.IsTainted(pid); ok {
			return tt
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) is not tainted; tainted: %+v", who, pid, tr.Tainted())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitUntainted(t *testing.T, tr *Tracker, who string, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := tr.IsTainted(pid); !ok {
			if inKernel(tr, pid) {
				t.Fatalf("%s (pid %d): still in the kernel's taints map", who, pid)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) is still tainted", who, pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// assertClean checks that pid is not tainted, after giving events time to
// arrive.
func assertClean(t *testing.T, tr *Tracker, who string, pid int) {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	if tt, ok := tr.IsTainted(pid); ok {
		t.Fatalf("%s (pid %d) is tainted: %+v", who, pid, tt)
	}
	if inKernel(tr, pid) {
		t.Fatalf("%s (pid %d) is in the kernel's taints map", who, pid)
	}
}

func inKernel(tr *Tracker, pid int) bool {
	k := uint32(pid)
	var v taintTaint
	return tr.objs.Taints.Lookup(&k, &v) == nil
}

func checkTaint(t *testing.T, who string, got Taint, kind, channel string, via int) {
	t.Helper()
	if got.Kind != kind || got.Channel != channel || got.Via != via {
		t.Fatalf("%s: got kind=%q channel=%q via=%d, want kind=%q channel=%q via=%d (%+v)",
			who, got.Kind, got.Channel, got.Via, kind, channel, via, got)
	}
	if got.Since.IsZero() || time.Since(got.Since) > time.Minute || time.Until(got.Since) > time.Second {
		t.Fatalf("%s: implausible Since %v", who, got.Since)
	}
}

// startTainted starts an agent and taints it with a TCP connection to the
// outside listener at to.
func startTainted(t *testing.T, tr *Tracker, name, to string, files ...*os.File) *agent {
	t.Helper()
	a := startAgent(t, name, "", files...)
	a.do("connect " + to)
	tt := waitTainted(t, tr, name, a.pid)
	checkTaint(t, name, tt, KindConnect, "", 0)
	return a
}

func serveOutside(t *testing.T, o *outside) string {
	t.Helper()
	l := startAgent(t, "outside listener", o.ns)
	l.do("tcp-serve 0.0.0.0:7100")
	return o.addr(o.peer, 7100)
}

// ---- tests ----

func TestConnectTaintsAndChildInherits(t *testing.T) {
	requireBPF(t)
	o := newOutside(t)
	tr := openTracker(t, Options{})
	l := startAgent(t, "outside listener", o.ns)
	l.do("tcp-serve 0.0.0.0:7100")

	a := startAgent(t, "client", "")
	assertClean(t, tr, "client before connecting", a.pid)
	a.do("connect " + o.addr(o.peer, 7100))
	ta := waitTainted(t, tr, "client", a.pid)
	checkTaint(t, "client", ta, KindConnect, "", 0)
	if want := netip.AddrPortFrom(o.peer, 7100); ta.Peer != want {
		t.Errorf("client: peer %v, want %v", ta.Peer, want)
	}
	if ta.Comm == "" {
		t.Errorf("client: empty comm")
	}

	// The listener in the other namespace accepted from our side.
	tl := waitTainted(t, tr, "outside listener", l.pid)
	checkTaint(t, "outside listener", tl, KindAccept, "", 0)
	if tl.Peer.Addr() != o.hostIP {
		t.Errorf("outside listener: peer %v, want %v", tl.Peer, o.hostIP)
	}

	child, err := strconv.Atoi(a.do("fork"))
	if err != nil {
		t.Fatal(err)
	}
	tc := waitTainted(t, tr, "child", child)
	checkTaint(t, "child", tc, KindInherit, "", a.pid)
	if tc.Peer != ta.Peer {
		t.Errorf("child: peer %v, want the parent's %v", tc.Peer, ta.Peer)
	}

	assertClean(t, tr, "the test process", os.Getpid())
	if n, ev := tr.Counts(); n < 3 || ev < 3 {
		t.Errorf("Counts() = %d, %d; want at least 3 tainted and 3 events", n, ev)
	}
}

func TestLoopbackOnlyStaysClean(t *testing.T) {
	tr := openTracker(t, Options{})
	srv := startAgent(t, "loopback server", "")
	cli := startAgent(t, "loopback client", "")

	addr := srv.do("listen tcp 127.0.0.1:0")
	srv.send("accept-read")
	cli.do("send tcp " + addr)
	srv.wait()

	srv.send("tcp-serve [::1]:0")
	addr6 := srv.wait()
	cli.do("connect " + addr6)

	uaddr := srv.do("udp-listen 127.0.0.1:0")
	srv.send("udp-recv")
	cli.do("udp-send " + uaddr)
	srv.wait()
	srv.send("udp-read")
	cli.do("udp-dial-send " + uaddr)
	srv.wait()

	path := filepath.Join(t.TempDir(), "s.sock")
	srv.do("listen unix " + path)
	srv.send("accept-read")
	cli.do("send unix " + path)
	srv.wait()

	assertClean(t, tr, "loopback server", srv.pid)
	assertClean(t, tr, "loopback client", cli.pid)
}

func TestIPCPropagation(t *testing.T) {
	requireBPF(t)
	o := newOutside(t)
	tr := openTracker(t, Options{})
	to := serveOutside(t, o)

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	src := startTainted(t, tr, "tainted writer", to, pw)
	pipeReader := startAgent(t, "pipe reader", "", pr)
	pr.Close()
	pw.Close()

	t.Run("unix stream", func(t *testing.T) {
		r := startAgent(t, "unix reader", "")
		path := filepath.Join(t.TempDir(), "s.sock")
		r.do("listen unix " + path)
		r.send("accept-read")
		src.in(t).do("send unix " + path)
		r.wait()
		checkTaint(t, "unix reader", waitTainted(t, tr, "unix reader", r.pid), KindIPC, ChannelUnix, src.pid)
	})
	t.Run("unix datagram", func(t *testing.T) {
		r := startAgent(t, "unixgram reader", "")
		path := filepath.Join(t.TempDir(), "g.sock")
		r.do("unixgram-listen " + path)
		r.send("unixgram-recv")
		src.in(t).do("unixgram-send " + path)
		r.wait()
		checkTaint(t, "unixgram reader", waitTainted(t, tr, "unixgram reader", r.pid), KindIPC, ChannelUnix, src.pid)
	})
	t.Run("connected unix datagram", func(t *testing.T) {
		r := startAgent(t, "unixgram reader", "")
		path := filepath.Join(t.TempDir(), "g.sock")
		r.do("unixgram-listen " + path)
		r.send("unixgram-recv")
		src.in(t).do("unixgram-dial-send " + path)
		r.wait()
		checkTaint(t, "unixgram reader", waitTainted(t, tr, "unixgram reader", r.pid), KindIPC, ChannelUnix, src.pid)
	})
	t.Run("pipe", func(t *testing.T) {
		assertClean(t, tr, "pipe reader before the write", pipeReader.pid)
		pipeReader.in(t).send("pipe-read")
		src.in(t).do("pipe-write")
		pipeReader.wait()
		tt := waitTainted(t, tr, "pipe reader", pipeReader.pid)
		checkTaint(t, "pipe reader", tt, KindIPC, ChannelPipe, src.pid)
		if want := netip.AddrPortFrom(o.peer, 7100); tt.Peer != want {
			t.Errorf("pipe reader: peer %v, want the writer's %v", tt.Peer, want)
		}
	})
	t.Run("loopback tcp", func(t *testing.T) {
		r := startAgent(t, "tcp reader", "")
		addr := r.do("listen tcp 127.0.0.1:0")
		r.send("accept-read")
		src.in(t).do("send tcp " + addr)
		r.wait()
		checkTaint(t, "tcp reader", waitTainted(t, tr, "tcp reader", r.pid), KindIPC, ChannelLoopback, src.pid)
	})
	t.Run("loopback tcp6", func(t *testing.T) {
		r := startAgent(t, "tcp6 reader", "")
		addr := r.do("listen tcp [::1]:0")
		r.send("accept-read")
		src.in(t).do("send tcp " + addr)
		r.wait()
		checkTaint(t, "tcp6 reader", waitTainted(t, tr, "tcp6 reader", r.pid), KindIPC, ChannelLoopback, src.pid)
	})
	t.Run("untainted writer", func(t *testing.T) {
		w := startAgent(t, "clean writer", "")
		r := startAgent(t, "clean reader", "")
		path := filepath.Join(t.TempDir(), "c.sock")
		r.do("listen unix " + path)
		r.send("accept-read")
		w.do("send unix " + path)
		r.wait()
		assertClean(t, tr, "clean reader", r.pid)
	})
}

func TestUDP(t *testing.T) {
	requireBPF(t)
	o := newOutside(t)
	tr := openTracker(t, Options{})

	a := startAgent(t, "udp sender", "")
	a.do("udp-send " + o.addr(o.peer, 7200))
	tt := waitTainted(t, tr, "udp sender", a.pid)
	checkTaint(t, "udp sender", tt, KindUDP, "", 0)
	if want := netip.AddrPortFrom(o.peer, 7200); tt.Peer != want {
		t.Errorf("udp sender: peer %v, want %v", tt.Peer, want)
	}

	b := startAgent(t, "connected udp sender", "")
	b.do("udp-dial-send " + o.addr(o.peer, 7200))
	checkTaint(t, "connected udp sender", waitTainted(t, tr, "connected udp sender", b.pid), KindUDP, "", 0)

	// Receiving from the outside: the sender lives in the namespace.
	r := startAgent(t, "udp receiver", "")
	port := netip.MustParseAddrPort(r.do("udp-listen 0.0.0.0:0")).Port()
	r.send("udp-recv")
	n := startAgent(t, "outside udp sender", o.ns)
	n.do("udp-send " + o.addr(o.hostIP, int(port)))
	r.wait()
	tt = waitTainted(t, tr, "udp receiver", r.pid)
	checkTaint(t, "udp receiver", tt, KindUDP, "", 0)
	if tt.Peer.Addr() != o.peer {
		t.Errorf("udp receiver: peer %v, want %v", tt.Peer, o.peer)
	}

	// read(2) on an unconnected wildcard socket: the sender is unknown and
	// the socket can hear the outside, so it taints without a peer.
	r2 := startAgent(t, "blind udp receiver", "")
	port = netip.MustParseAddrPort(r2.do("udp-listen 0.0.0.0:0")).Port()
	r2.send("udp-read")
	n.do("udp-send " + o.addr(o.hostIP, int(port)))
	r2.wait()
	tt = waitTainted(t, tr, "blind udp receiver", r2.pid)
	checkTaint(t, "blind udp receiver", tt, KindUDP, "", 0)
	if tt.Peer.IsValid() {
		t.Errorf("blind udp receiver: peer %v, want none", tt.Peer)
	}
}

func TestIgnoreList(t *testing.T) {
	requireBPF(t)
	o := newOutside(t)
	tr := openTracker(t, Options{Ignore: []netip.Prefix{netip.PrefixFrom(o.peer2, 32)}})
	serveOutside(t, o)

	a := startAgent(t, "management client", "")
	a.do("connect " + o.addr(o.peer2, 7100))
	a.do("udp-send " + o.addr(o.peer2, 7200))
	a.do("udp-dial-send " + o.addr(o.peer2, 7200))
	assertClean(t, tr, "management client", a.pid)

	a.do("connect " + o.addr(o.peer, 7100))
	checkTaint(t, "client", waitTainted(t, tr, "client", a.pid), KindConnect, "", 0)
}

func TestExitAndReset(t *testing.T) {
	requireBPF(t)
	o := newOutside(t)
	tr := openTracker(t, Options{})
	to := serveOutside(t, o)

	a := startTainted(t, tr, "a", to)
	a.do("thread-exit")
	time.Sleep(200 * time.Millisecond)
	if _, ok := tr.IsTainted(a.pid); !ok {
		t.Fatal("a thread's exit untainted its process")
	}
	a.send("exit")
	waitUntainted(t, tr, "exited process", a.pid)

	b := startTainted(t, tr, "b", to)
	c := startTainted(t, tr, "c", to)
	if err := tr.Reset(b.pid); err != nil {
		t.Fatal(err)
	}
	waitUntainted(t, tr, "reset b", b.pid)
	if _, ok := tr.IsTainted(c.pid); !ok {
		t.Fatal("Reset(b) untainted c")
	}
	// b's taint comes back with new outside traffic.
	b.do("connect " + to)
	waitTainted(t, tr, "b after reset", b.pid)

	if err := tr.Reset(0); err != nil {
		t.Fatal(err)
	}
	waitUntainted(t, tr, "b after Reset(0)", b.pid)
	waitUntainted(t, tr, "c after Reset(0)", c.pid)
	if err := tr.Reset(-1); err == nil {
		t.Error("Reset(-1) succeeded")
	}
}

func TestIPCExempt(t *testing.T) {
	requireBPF(t)
	o := newOutside(t)
	comm := filepath.Base(os.Args[0]) // the agents' comm
	if len(comm) > 15 {
		comm = comm[:15]
	}
	tr := openTracker(t, Options{IPCExempt: []string{comm}})
	to := serveOutside(t, o)
	src := startTainted(t, tr, "tainted writer", to) // network still taints
	r := startAgent(t, "exempt reader", "")
	path := filepath.Join(t.TempDir(), "s.sock")
	r.do("listen unix " + path)
	r.send("accept-read")
	src.do("send unix " + path)
	r.wait()
	assertClean(t, tr, "exempt reader", r.pid)
}

func TestExistingConnections(t *testing.T) {
	requireBPF(t)
	o := newOutside(t)
	to := serveOutside(t, o)
	// Connected before the tracker starts: found by the /proc scan.
	a := startAgent(t, "old client", "")
	a.do("connect " + to)
	b := startAgent(t, "old loopback client", "")
	b.send("tcp-serve 127.0.0.1:0")
	b.do("connect " + b.wait())

	tr := openTracker(t, Options{})
	tt := waitTainted(t, tr, "old client", a.pid)
	checkTaint(t, "old client", tt, KindExisting, "", 0)
	if want := netip.MustParseAddrPort(to); tt.Peer != want {
		t.Errorf("old client: peer %v, want %v", tt.Peer, want)
	}
	assertClean(t, tr, "old loopback client", b.pid)

	trNoScan := openTracker(t, Options{NoScan: true})
	assertClean(t, trNoScan, "old client without the scan", a.pid)
}

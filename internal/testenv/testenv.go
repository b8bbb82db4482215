package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/hostd"
	"github.com/vishvananda/netns"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// RepoRoot is the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Binary builds ./cmd/symvirt once per test process and returns its path:
// one path per source tree and user, in the temporary directory, replaced
// by a rename, so that test processes do not leave a binary each behind
// and one that still runs the previous build keeps it.
func Binary(t testing.TB) string {
	buildOnce.Do(func() {
		root := RepoRoot(t)
		sum := sha256.Sum256([]byte(root))
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("symvirt-bin-%d-%x", os.Getuid(), sum[:6]))
		if buildErr = ownDir(dir); buildErr != nil {
			return
		}
		tmp, err := os.CreateTemp(dir, "symvirt-*")
		if err != nil {
			buildErr = err
			return
		}
		tmp.Close()
		defer os.Remove(tmp.Name())
		cmd := exec.Command("go", "build", "-o", tmp.Name(), "./cmd/symvirt")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		binPath = filepath.Join(dir, "symvirt")
		buildErr = os.Rename(tmp.Name(), binPath)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// ownDir makes dir, or checks that the one there is a directory of this
// user's that nobody else may write: another local user's would let them
// swap the binary between its build and its use.
func ownDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is not a directory of uid %d closed to others (%v)", dir, os.Getuid(), fi.Mode())
	}
	return nil
}

// RequireRoot skips (or fails, under SYMVIRT_REQUIRE_QEMU=1) without root.
func RequireRoot(t testing.TB) {
	if os.Geteuid() != 0 {
		if os.Getenv("SYMVIRT_REQUIRE_QEMU") == "1" {
			t.Fatal("this test needs root (network namespaces)")
		}
		t.Skip("needs root for network namespaces")
	}
}

func randSuffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Run runs a command and fails the test on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NetNS is a network namespace standing for one host.
type NetNS struct{ Name string }

// NewNetNS creates a namespace with loopback up; it is deleted at cleanup.
func NewNetNS(t testing.TB, prefix string) *NetNS {
	RequireRoot(t)
	ns := &NetNS{Name: "sv" + prefix + "-" + randSuffix()}
	Run(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.Name).Run() })
	Run(t, "ip", "-n", ns.Name, "link", "set", "lo", "up")
	return ns
}

// Link joins two namespaces with a veth pair and gives each end an
// address (CIDR).
func Link(t testing.TB, a, b *NetNS, addrA, addrB string) {
	ea, eb := veth(t, "v", a, b)
	Run(t, "ip", "-n", a.Name, "addr", "add", addrA, "dev", ea)
	Run(t, "ip", "-n", b.Name, "addr", "add", addrB, "dev", eb)
	Run(t, "ip", "-n", a.Name, "link", "set", ea, "up")
	Run(t, "ip", "-n", b.Name, "link", "set", eb, "up")
}

// veth creates a veth pair (names starting with prefix) with one end in a,
// the other in b.
func veth(t testing.TB, prefix string, a, b *NetNS) (ea, eb string) {
	sfx := randSuffix()
	ea, eb = prefix+"a"+sfx, prefix+"b"+sfx
	Run(t, "ip", "link", "add", ea, "type", "veth", "peer", "name", eb)
	Run(t, "ip", "link", "set", ea, "netns", a.Name)
	Run(t, "ip", "link", "set", eb, "netns", b.Name)
	return ea, eb
}

// Daemon is a symvirt daemon process under test (hostd, coord): started
// from the built binary, optionally inside a namespace, its output kept
// and printed only if the test fails.
type Daemon struct {
	t    testing.TB
	Name string
	NS   *NetNS // nil: the test's own namespace
	// Args builds the command line (it may change between restarts).
	Args func() []string
	// Ready reports whether the daemon answers.
	Ready func() error
	Env   []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	logs bytes.Buffer
	done chan struct{}
}

// Logs returns what the daemon printed so far.
func (d *Daemon) Logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// Start (re)starts the process and waits until it is ready.
func (d *Daemon) Start() {
	t := d.t
	t.Helper()
	bin := Binary(t)
	args := d.Args()
	var cmd *exec.Cmd
	if d.NS != nil {
		cmd = exec.Command("ip", append([]string{"netns", "exec", d.NS.Name, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Env = append(os.Environ(), d.Env...)
	cmd.Stdout, cmd.Stderr = &lockedWriter{d}, &lockedWriter{d}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	d.mu.Lock()
	d.cmd, d.done = cmd, done
	d.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := d.Ready()
		if err == nil {
			return
		}
		select {
		case <-done:
			t.Fatalf("%s exited at start:\n%s", d.Name, d.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not up after 20s: %v\n%s", d.Name, err, d.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill sends SIGKILL to the daemon (only it: QEMUs run in their own
// sessions) and waits for it to exit.
func (d *Daemon) Kill() {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	// With ip netns exec the daemon is exec'd in place, so this is it.
	<-done
}

// Exited reports whether the process has ended (on its own or killed).
func (d *Daemon) Exited() bool {
	d.mu.Lock()
	done := d.done
	d.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Hostd is a hostd process under test.
type Hostd struct {
	Daemon
	StateDir string
	Listen   string // TCP API address, "" for none
	Config   string // config file path
	Args     []string
}

// Layout is where this hostd keeps its files.
func (h *Hostd) Layout() hostd.Layout { return hostd.Layout{StateDir: h.StateDir} }

// Socket is the hostd's unix API socket.
func (h *Hostd) Socket() string { return h.Layout().Socket() }

// Client returns an API client on the unix socket.
func (h *Hostd) Client() *hostd.Client { return hostd.NewClient(h.Socket()) }

// Addr is the address another hostd uses to reach this one.
func (h *Hostd) Addr() string {
	if h.Listen != "" {
		return h.Listen
	}
	return h.Socket()
}

// StartHostd starts a hostd; cfg (YAML) may be empty. It is stopped, and
// every QEMU under its state dir killed, at cleanup; its logs are printed
// if the test failed.
func StartHostd(t testing.TB, name string, ns *NetNS, listen string, cfg string, args ...string) *Hostd {
	h := &Hostd{StateDir: t.TempDir(), Listen: listen, Args: args}
	h.Daemon = Daemon{t: t, Name: "hostd " + name, NS: ns}
	if !strings.Contains(cfg, "policy:") {
		cfg += PolicyYAML(t)
	}
	if cfg != "" {
		h.Config = filepath.Join(t.TempDir(), "host.yaml")
		if err := os.WriteFile(h.Config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h.Daemon.Args = func() []string {
		a := []string{"hostd", "--state-dir", h.StateDir, "--log-level", "debug"}
		if h.Listen != "" {
			host, _, _ := strings.Cut(h.Listen, ":")
			a = append(a, "--listen", h.Listen, "--migration-address", host)
			if !slices.Contains(h.Args, "--tls-cert") {
				// Test hosts in their own namespaces; hostd refuses a
				// plain TCP API on a routable address without it.
				a = append(a, "--insecure")
			}
		}
		if h.Config != "" {
			a = append(a, "--config", h.Config)
		}
		return append(a, h.Args...)
	}
	h.Ready = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := h.Client().List(ctx)
		return err
	}
	t.Cleanup(func() {
		h.Kill()
		KillUnder(h.StateDir)
		// QEMUs killed by a test leave their shared RAM behind (hostd
		// keeps a crashed VM's file for the operator); a test must not.
		for _, dir := range h.Layout().RAMDirs() {
			os.RemoveAll(dir)
		}
		if t.Failed() {
			t.Logf("---- %s logs ----\n%s", h.Name, h.Logs())
			vms, _ := os.ReadDir(h.Layout().VMs())
			for _, vm := range vms {
				printTail(t, h.Layout().QEMULog(vm.Name()))
				printTail(t, h.Layout().SerialLog(vm.Name()))
			}
		}
	})
	h.Start()
	return h
}

// printTail logs the end of a file.
func printTail(t testing.TB, f string) {
	data, _ := os.ReadFile(f)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	t.Logf("---- %s (tail) ----\n%s", f, data)
}

// PolicyDirs are the directories a test hostd lets specs use for kernels,
// initrds and disks: the test guest's ($SYMVIRT_GUEST_DIR or build/guest)
// and the test's own temporary directories.
func PolicyDirs(t testing.TB) []string {
	guest := os.Getenv("SYMVIRT_GUEST_DIR")
	if guest == "" {
		guest = filepath.Join(RepoRoot(t), "build", "guest")
	}
	return []string{guest, filepath.Dir(t.TempDir())}
}

// PolicyYAML is the host config's policy block for PolicyDirs (a warm
// restart's new QEMU binary may come from them too).
func PolicyYAML(t testing.TB) string {
	var q []string
	for _, d := range PolicyDirs(t) {
		q = append(q, strconv.Quote(d))
	}
	list := strings.Join(q, ", ")
	return fmt.Sprintf("\npolicy: {image_dirs: [%s], disk_dirs: [%s], qemu_dirs: [%s]}\n", list, list, list)
}

type lockedWriter struct{ d *Daemon }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	return w.d.logs.Write(p)
}

// KillUnder kills every process whose command line mentions dir (the
// QEMUs of a state dir).
func KillUnder(dir string) {
	for _, pid := range PIDsUnder(dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// PIDsUnder lists processes whose command line mentions dir.
func PIDsUnder(dir string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(cmdline, []byte(dir)) {
			out = append(out, pid)
		}
	}
	return out
}

// Bridge creates a bridge named br in the namespace, up.
func Bridge(t testing.TB, ns *NetNS, br string) {
	Run(t, "ip", "-n", ns.Name, "link", "add", br, "type", "bridge")
	Run(t, "ip", "-n", ns.Name, "link", "set", br, "up")
}

// Tap creates a tap device for QEMU in the namespace, on bridge br.
func Tap(t testing.TB, ns *NetNS, tap, br string) {
	Run(t, "ip", "-n", ns.Name, "tuntap", "add", "dev", tap, "mode", "tap")
	Run(t, "ip", "-n", ns.Name, "link", "set", tap, "master", br, "up")
}

// BridgeLink joins bridge brA in a and brB in b with a veth pair, so both
// are one L2 segment (the cluster network guests share).
func BridgeLink(t testing.TB, a *NetNS, brA string, b *NetNS, brB string) {
	ea, eb := veth(t, "l", a, b)
	Run(t, "ip", "-n", a.Name, "link", "set", ea, "master", brA, "up")
	Run(t, "ip", "-n", b.Name, "link", "set", eb, "master", brB, "up")
}

// Attach gives namespace c an address on bridge br of namespace a (a
// client on the guests' L2).
func Attach(t testing.TB, c *NetNS, addr string, a *NetNS, br string) {
	ec, ea := veth(t, "c", c, a)
	Run(t, "ip", "-n", c.Name, "addr", "add", addr, "dev", ec)
	Run(t, "ip", "-n", c.Name, "link", "set", ec, "up")
	Run(t, "ip", "-n", a.Name, "link", "set", ea, "master", br, "up")
}

// DialIn dials a TCP address from inside namespace ns; the socket stays in
// that namespace for its whole life.
func DialIn(ns *NetNS, addr string, timeout time.Duration) (net.Conn, error) {
	return InNetNS(ns, func() (net.Conn, error) { return net.DialTimeout("tcp", addr, timeout) })
}

// Coord is a coordinator process under test.
type Coord struct {
	Daemon
	StateDir      string
	CheckpointDir string
	Extra         []string
}

// Socket is the coordinator's unix API socket.
func (c *Coord) Socket() string { return coord.SocketPath(c.StateDir) }

// CLI runs a symvirt command against this coordinator.
func (c *Coord) CLI(t testing.TB, args ...string) (string, error) {
	cmd := exec.Command(Binary(t), args...)
	cmd.Env = append(os.Environ(), "SYMVIRT_COORD="+c.Socket())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// StartCoord starts a coordinator (in ns, if set) with extra flags.
func StartCoord(t testing.TB, ns *NetNS, checkpointDir string, env []string, extra ...string) *Coord {
	return StartCoordIn(t, ns, t.TempDir(), checkpointDir, env, extra...)
}

// StartCoordIn is StartCoord with the coordinator's state dir given (e.g.
// a small tmpfs a test fills).
func StartCoordIn(t testing.TB, ns *NetNS, stateDir, checkpointDir string, env []string, extra ...string) *Coord {
	c := &Coord{StateDir: stateDir, CheckpointDir: checkpointDir, Extra: extra}
	c.Daemon = Daemon{t: t, Name: "coord", NS: ns, Env: env}
	c.Daemon.Args = func() []string {
		return append([]string{"coord", "--state-dir", c.StateDir, "--checkpoint-dir", c.CheckpointDir,
			"--log-level", "debug"}, c.Extra...)
	}
	c.Ready = func() error {
		_, err := os.Stat(c.Socket())
		if err != nil {
			return err
		}
		out, err := c.CLI(t, "hosts")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			t.Logf("---- coord logs ----\n%s", c.Logs())
		}
	})
	c.Start()
	return c
}

// HTTPClientIn is an HTTP client whose connections are made inside
// namespace ns (HTTP dials on goroutines of its own, so switching the
// caller's thread would not do).
func HTTPClientIn(ns *NetNS, cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: cfg,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return DialIn(ns, addr, 5*time.Second)
		},
	}}
}

var (
	buildMu  sync.Mutex
	builtDir = map[string]error{}
)

// Make builds a C example once per test process with its Makefile (e.g.
// "examples/hook") and returns the path of its binary (the directory's
// base name).
func Make(t testing.TB, dir string) string {
	root := RepoRoot(t)
	buildMu.Lock()
	err, done := builtDir[dir]
	if !done {
		out, berr := exec.Command("make", "-s", "-C", filepath.Join(root, dir)).CombinedOutput()
		if berr != nil {
			err = fmt.Errorf("make -C %s: %v: %s", dir, berr, out)
		}
		builtDir[dir] = err
	}
	buildMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, dir, filepath.Base(dir))
}

// InNetNS runs open with the calling thread inside namespace ns and returns
// what it opened: a socket keeps the namespace it was made in.
func InNetNS[T any](ns *NetNS, open func() (T, error)) (T, error) {
	var zero T
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return zero, err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns.Name)
	if err != nil {
		return zero, err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return zero, err
	}
	defer netns.Set(orig)
	return open()
}

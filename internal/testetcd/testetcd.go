// Package testetcd runs a real etcd cluster for tests: N members of the
// etcd server from Debian's etcd-server package (scripts/deps), each its
// own process, on loopback ports, optionally inside a network namespace
// (where the coordinators under test run).
package testetcd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	Members []*Member
}

// Member is one etcd server process.
type Member struct {
	Name    string
	Client  string // http://127.0.0.1:PORT
	Peer    string
	ns      string
	dir     string
	initial string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	logs    bytes.Buffer
}

// Binary is the etcd server; the test is skipped without it.
func Binary(t testing.TB) string {
	for _, p := range []string{os.Getenv("SYMVIRT_ETCD_BIN"), "/usr/bin/etcd"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	t.Skip("no etcd server binary (apt-get install etcd-server)")
	return ""
}

// Start starts an n-member cluster in namespace ns ("" for the test's own)
// with client ports base, base+2, ... and peer ports base+1, base+3, ...,
// and waits until it has a leader; extra are more etcd flags (they win
// over the defaults). Everything is killed at cleanup.
func Start(t testing.TB, ns string, n, base int, extra ...string) *Cluster {
	t.Helper()
	bin := Binary(t)
	c := &Cluster{}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i), ns: ns, dir: t.TempDir(),
			Client: fmt.Sprintf("http://127.0.0.1:%d", base+2*i), Peer: fmt.Sprintf("http://127.0.0.1:%d", base+2*i+1)}
		initial = append(initial, m.Name+"="+m.Peer)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.initial = strings.Join(initial, ",")
		m.start(t, bin, extra)
		t.Cleanup(func() {
			m.Kill()
			if t.Failed() {
				t.Logf("---- etcd %s ----\n%s", m.Name, tail(m.Logs(), 3000))
			}
		})
	}
	c.waitHealthy(t)
	return c
}

// Endpoints are the members' client URLs, comma-separated.
func (c *Cluster) Endpoints() string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Client)
	}
	return strings.Join(eps, ",")
}

func (m *Member) start(t testing.TB, bin string, extra []string) {
	args := []string{"--name", m.Name, "--data-dir", filepath.Join(m.dir, "data"),
		"--listen-client-urls", m.Client, "--advertise-client-urls", m.Client,
		"--listen-peer-urls", m.Peer, "--initial-advertise-peer-urls", m.Peer,
		"--initial-cluster", m.initial, "--initial-cluster-state", "new", "--initial-cluster-token", "symvirt-test",
		"--heartbeat-interval", "100", "--election-timeout", "1000", "--log-level", "warn", "--logger", "zap"}
	args = append(args, extra...)
	var cmd *exec.Cmd
	if m.ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", m.ns, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Stdout, cmd.Stderr = &writer{m}, &writer{m}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("etcd %s: %v", m.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
}

// Kill kills the member (SIGKILL) and waits for it.
func (m *Member) Kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Logs is what the member printed.
func (m *Member) Logs() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.logs.String()
}

type writer struct{ m *Member }

func (w *writer) Write(p []byte) (int, error) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	return w.m.logs.Write(p)
}

// waitHealthy waits until every member answers its health endpoint with a
// leader elected.
func (c *Cluster) waitHealthy(t testing.TB) {
	deadline := time.Now().Add(30 * time.Second)
	for _, m := range c.Members {
		for {
			err := m.healthy()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("etcd %s not healthy after 30s: %v\n%s", m.Name, err, tail(m.Logs(), 3000))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (m *Member) healthy() error {
	args := []string{"--endpoints", m.Client, "endpoint", "health", "--command-timeout", "2s"}
	ctl := "etcdctl"
	var cmd *exec.Cmd
	if m.ns != "" {
		cmd = exec.CommandContext(context.Background(), "ip", append([]string{"netns", "exec", m.ns, ctl}, args...)...)
	} else {
		cmd = exec.Command(ctl, args...)
	}
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "is healthy") {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// FreeBase is a base port with 2n free ports after it in the test's own
// namespace (best effort: another process may take one before etcd).
func FreeBase(t testing.TB, n int) int {
	for base := 20000 + os.Getpid()%20000; ; base += 2 * n {
		ok := true
		for p := base; p < base+2*n; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

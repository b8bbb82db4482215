package guestd

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mdlayher/vsock"

	"github.com/symvirt/symvirt/guestproto"
)

// The vsock peer filter: only the host, from a port only root can bind.
func TestVsockHostPeer(t *testing.T) {
	for _, tc := range []struct {
		name string
		addr net.Addr
		ok   bool
	}{
		{"hostd: host CID, privileged port", &vsock.Addr{ContextID: vsock.Host, Port: 1023}, true},
		{"host, lowest port", &vsock.Addr{ContextID: vsock.Host, Port: 1}, true},
		{"host user: autobound port 1024", &vsock.Addr{ContextID: vsock.Host, Port: 1024}, false},
		{"host user: high port", &vsock.Addr{ContextID: vsock.Host, Port: 49152}, false},
		{"guest user through loopback (CID 1)", &vsock.Addr{ContextID: vsock.Local, Port: 1023}, false},
		{"hypervisor CID 0", &vsock.Addr{ContextID: vsock.Hypervisor, Port: 100}, false},
		{"guest's own CID", &vsock.Addr{ContextID: 3, Port: 1000}, false},
		{"another VM", &vsock.Addr{ContextID: 42, Port: 80}, false},
		{"not vsock", &net.UnixAddr{Name: "@x", Net: "unix"}, false},
	} {
		err := vsockHostPeer(tc.addr)
		if tc.ok && err != nil {
			t.Errorf("%s: refused: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrPeerRefused) {
			t.Errorf("%s: %v, want ErrPeerRefused", tc.name, err)
		}
	}
}

// dialHello connects to the channel and sends HELLO; it returns the
// connection and its first frame, or the read error.
func dialHello(t *testing.T, path string) (net.Conn, guestproto.Message, error) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	hello, _ := guestproto.Encode(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeHello})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(hello); err != nil {
		return c, guestproto.Message{}, err
	}
	m, err := guestproto.ReadFrame(bufio.NewReader(c))
	return c, m, err
}

// A second host connection never replaces a live one: it is closed without
// an answer, and the first carries on (a full round still works). Once the
// first hangs up, a new one is served.
func TestSecondHostConnectionRefused(t *testing.T) {
	e := startGuestd(t, nil)
	app := cooperate(t, e.app("solver"))
	h1, _ := e.host()

	_, m, err := dialHello(t, e.chanPath)
	if err == nil {
		t.Fatalf("second connection got %+v while the first is live; want it closed", m)
	}
	if err := h1.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r1", Op: guestproto.OpCheckpoint, Deadline: 5 * time.Second}); err != nil {
		t.Fatalf("first host after the intruder: Prepare: %v", err)
	}
	if err := h1.Resume(ctxFor(t, 10*time.Second), "r1", guestproto.OutcomeCheckpointed); err != nil {
		t.Fatalf("first host after the intruder: Resume: %v", err)
	}
	if o := recvOutcome(t, app); o.Outcome != "checkpointed" || o.ID != "r1" {
		t.Errorf("app got %+v", o)
	}
	h1.Close()
	if _, ack := e.host(); ack.State != guestproto.StateIdle {
		t.Errorf("host after the first hung up: %+v", ack)
	}
}

// A host that falls silent (no PING, nothing) is dropped, so that a dead
// connection does not keep the next host out for ever.
func TestSilentHostDropped(t *testing.T) {
	e := startGuestd(t, func(c *Config) { c.hostSilence = 300 * time.Millisecond })
	c, m, err := dialHello(t, e.chanPath)
	if err != nil || m.Type != guestproto.TypeHelloAck {
		t.Fatalf("HELLO: %+v %v", m, err)
	}
	br := bufio.NewReader(c)
	for {
		if _, err := guestproto.ReadFrame(br); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("guestd kept a silent host's connection")
			}
			break // closed by guestd
		}
	}
	if _, ack := e.host(); ack.State != guestproto.StateIdle {
		t.Errorf("host after the silent one: %+v", ack)
	}
}

// The filter's premise, on this kernel: binding a vsock port below 1024
// takes root, so an unprivileged user cannot speak from one (and hostd,
// root, can). The control: the same user binds an unprivileged port.
func TestVsockPrivilegedPortNeedsRoot(t *testing.T) {
	if p := os.Getenv("SYMVIRT_VSOCK_BIND"); p != "" {
		port, _ := strconv.Atoi(p)
		fmt.Printf("bind %d as uid %d: %v\n", port, os.Getuid(), bindVsock(uint32(port)))
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user")
	}
	if err := bindVsock(maxPrivilegedPort); err != nil {
		t.Skipf("cannot bind a vsock port even as root here: %v", err)
	}
	asNobody := func(port int) string {
		cmd := exec.Command("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
			os.Args[0], "-test.run", "^TestVsockPrivilegedPortNeedsRoot$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("SYMVIRT_VSOCK_BIND=%d", port))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("setpriv: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := asNobody(maxPrivilegedPort); !strings.Contains(out, "bind 1023 as uid 65534: permission denied") {
		t.Errorf("nobody binding vsock port 1023:\n%s\nwant permission denied", out)
	}
	if out := asNobody(40000 + os.Getpid()%10000); !strings.Contains(out, ": <nil>") {
		t.Errorf("control, nobody binding an unprivileged vsock port:\n%s", out)
	}
}

func bindVsock(port uint32) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port})
}

package hostd

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// hostd dials guestd from a privileged vsock port (guestd refuses any
// other). Without /dev/vhost-vsock there is no guest to reach here, so the
// test dials the loopback (CID 1) and checks the socket was bound to port
// 1023 before the connect, whatever the connect's outcome.
func TestDialVsockPrivilegedSourcePort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("binding a privileged vsock port needs root")
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Skipf("no AF_VSOCK here: %v", err)
	}
	unix.Close(fd)
	ln, lerr := vsock.Listen(10240+9, nil)
	if lerr == nil {
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				if a, ok := c.RemoteAddr().(*vsock.Addr); !ok || a.Port != vsockSourcePortHigh {
					t.Errorf("listener saw peer %v, want port %d", c.RemoteAddr(), vsockSourcePortHigh)
				}
				c.Close()
			}
		}()
	}
	c, err := dialVsockPrivileged(vsock.Local, 10240+9)
	if err == nil {
		if a := c.LocalAddr().(*vsock.Addr); a.Port != vsockSourcePortHigh {
			t.Errorf("local address %v", a)
		}
		c.Close()
		return
	}
	if errors.Is(err, unix.EACCES) || !strings.Contains(err.Error(), "from port 1023") {
		t.Fatalf("dial: %v; want a connect from source port 1023 (vsock loopback may be absent, the bind must not fail)", err)
	}
	t.Logf("bound port 1023; the connect failed as expected without vsock loopback: %v", err)
}

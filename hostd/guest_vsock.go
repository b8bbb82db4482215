package hostd

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// vsockSourcePorts are the privileged source ports hostd dials guestd from,
// highest first. guestd accepts only the host from a port below 1024, which
// only root (CAP_NET_BIND_SERVICE) can bind: a host user cannot pass for
// hostd.
const (
	vsockSourcePortHigh = 1023
	vsockSourcePortLow  = 512
)

// dialVsockPrivileged connects to guestd at cid:port from a free privileged
// source port. It blocks for the kernel's connect timeout at most.
func dialVsockPrivileged(cid, port uint32) (net.Conn, error) {
	var last error
	for src := uint32(vsockSourcePortHigh); src >= vsockSourcePortLow; src-- {
		c, err := dialVsockFrom(src, cid, port)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, unix.EADDRINUSE) {
			return nil, err
		}
		last = err
	}
	return nil, fmt.Errorf("vsock: no free privileged source port in %d-%d: %w", vsockSourcePortLow, vsockSourcePortHigh, last)
}

func dialVsockFrom(src, cid, port uint32) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: src}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind source port %d: %w", src, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock connect %d:%d from port %d: %w", cid, port, src, err)
	}
	// Non-blocking, so that os.File puts it in the poller and deadlines work.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock: %w", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d:%d", cid, port))
	return &vsockConn{File: f,
		local:  &vsock.Addr{ContextID: unix.VMADDR_CID_HOST, Port: src},
		remote: &vsock.Addr{ContextID: cid, Port: port}}, nil
}

// vsockConn is a connected vsock socket as a net.Conn.
type vsockConn struct {
	*os.File
	local, remote net.Addr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

package migstream

import (
	"context"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/symvirt/symvirt/qmp"
)

// socketBuf is the send buffer of both ends of QEMU's socket.
const socketBuf = 4 << 20

// SocketPair returns two connected unix stream sockets: one for QEMU
// (passed with getfd, then closed here), one for hostd.
func SocketPair() (qemuEnd *os.File, ours *net.UnixConn, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("migration socketpair: %w", err)
	}
	for _, fd := range fds {
		// Room for several of QEMU's 256 KiB writes, so that QEMU and the
		// copy rarely wait on each other (FORCE: hostd is root; best effort).
		if syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, socketBuf) != nil {
			syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, socketBuf)
		}
	}
	qemuEnd = os.NewFile(uintptr(fds[0]), "migration-qemu")
	f := os.NewFile(uintptr(fds[1]), "migration-hostd")
	defer f.Close() // FileConn holds its own copy
	c, err := net.FileConn(f)
	if err != nil {
		qemuEnd.Close()
		return nil, nil, fmt.Errorf("migration socketpair: %w", err)
	}
	return qemuEnd, c.(*net.UnixConn), nil
}

// PassToQEMU hands QEMU its end of a new socketpair under name.
func PassToQEMU(ctx context.Context, mon *qmp.Client, name string) (*net.UnixConn, error) {
	qemuEnd, ours, err := SocketPair()
	if err != nil {
		return nil, err
	}
	err = mon.GetFD(ctx, name, qemuEnd)
	qemuEnd.Close()
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("migration stream: getfd: %w", err)
	}
	return ours, nil
}

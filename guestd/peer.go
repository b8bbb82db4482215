package guestd

import (
	"errors"
	"fmt"
	"net"

	"github.com/mdlayher/vsock"
)

// Host channel admission errors.
var (
	// ErrPeerRefused: a vsock peer that is not the host's privileged hostd.
	ErrPeerRefused = errors.New("guestd: host channel peer refused")
	// ErrChannelBusy: a host connection arrived while another one is live.
	ErrChannelBusy = errors.New("guestd: host channel already in use")
)

// maxPrivilegedPort is the highest vsock port only a privileged process can
// bind (the kernel's LAST_RESERVED_PORT: binding at or below it needs
// CAP_NET_BIND_SERVICE).
const maxPrivilegedPort = 1023

// vsockHostPeer admits a vsock peer only if it is the host (CID 2) speaking
// from a privileged port, i.e. root on the host, which hostd is. Everything
// else is refused: a guest user through the loopback (CID 1) or the guest's
// own CID, another VM, or an unprivileged host user (whose connect is
// autobound to a port above 1023).
func vsockHostPeer(remote net.Addr) error {
	a, ok := remote.(*vsock.Addr)
	if !ok {
		return fmt.Errorf("%w: %v is not a vsock address", ErrPeerRefused, remote)
	}
	if a.ContextID != vsock.Host {
		return fmt.Errorf("%w: %s is not the host (CID %d)", ErrPeerRefused, a, vsock.Host)
	}
	if a.Port > maxPrivilegedPort {
		return fmt.Errorf("%w: %s speaks from unprivileged port %d (hostd binds one below %d)",
			ErrPeerRefused, a, a.Port, maxPrivilegedPort+1)
	}
	return nil
}

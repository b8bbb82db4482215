package migstream

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// DefaultPorts is where incoming QEMUs listen unless the config says
// otherwise: 256 ports of the dynamic range.
const DefaultPorts = "49152-49407"

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Lo, Hi int }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// Contains reports whether p is in the range.
func (r PortRange) Contains(p int) bool { return p >= r.Lo && p <= r.Hi }

// ParsePortRange reads "LOW-HIGH" (or one port).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	var r PortRange
	var err1, err2 error
	r.Lo, err1 = strconv.Atoi(strings.TrimSpace(lo))
	r.Hi, err2 = strconv.Atoi(strings.TrimSpace(hi))
	if err1 != nil || err2 != nil || r.Lo < 1 || r.Hi > 65535 || r.Lo > r.Hi {
		return PortRange{}, fmt.Errorf("%q: want LOW-HIGH within 1-65535: %w", s, jsonapi.ErrInvalid)
	}
	return r, nil
}

// Listen listens on a port in ports at addr, starting at a random one so
// concurrent incoming migrations rarely collide.
func Listen(addr string, ports PortRange) (net.Listener, int, error) {
	n := ports.Hi - ports.Lo + 1
	first := rand.IntN(n)
	var lastErr error
	for i := range n {
		port := ports.Lo + (first+i)%n
		l, err := net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
		if err == nil {
			return l, port, nil
		}
		lastErr = err
	}
	return nil, 0, fmt.Errorf("migration address %s: no free port in %s: %w", addr, ports, lastErr)
}

// FreePort finds a port in ports that addr can listen on now (QEMU then
// listens there).
func FreePort(addr string, ports PortRange) (int, error) {
	l, port, err := Listen(addr, ports)
	if err != nil {
		return 0, err
	}
	l.Close()
	return port, nil
}

package hostd

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// defaultMigrationPorts is where incoming QEMUs listen unless the config
// says otherwise: 256 ports of the dynamic range.
const defaultMigrationPorts = "49152-49407"

// portRange is an inclusive range of TCP ports.
type portRange struct{ lo, hi int }

func (r portRange) String() string { return fmt.Sprintf("%d-%d", r.lo, r.hi) }

func (r portRange) contains(p int) bool { return p >= r.lo && p <= r.hi }

// parsePortRange reads "LOW-HIGH" (or one port).
func parsePortRange(s string) (portRange, error) {
	lo, hi, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		hi = lo
	}
	var r portRange
	var err1, err2 error
	r.lo, err1 = strconv.Atoi(strings.TrimSpace(lo))
	r.hi, err2 = strconv.Atoi(strings.TrimSpace(hi))
	if err1 != nil || err2 != nil || r.lo < 1 || r.hi > 65535 || r.lo > r.hi {
		return portRange{}, fmt.Errorf("config: migration_ports %q: want LOW-HIGH within 1-65535", s)
	}
	return r, nil
}

// checkMigrationURI accepts, as the stream address a destination hostd
// answered, only QEMU's "tcp:HOST:PORT" (IPv6 in brackets) with HOST the
// address the source was told to migrate to and PORT in ports. The URI
// goes into QMP migrate on the source, where "exec:" would run a shell
// command as root and "unix:"/"fd:" would send the VM elsewhere.
// dest is the destination hostd's API address: host:port, or a unix
// socket path, a same-host setting where only loopback is accepted.
func checkMigrationURI(uri, dest string, ports portRange) (host string, err error) {
	bad := func(why string, args ...any) (string, error) {
		return "", fmt.Errorf("destination %s answered migration address %q: %s: %w",
			dest, uri, fmt.Sprintf(why, args...), ErrUnauthorized)
	}
	rest, ok := strings.CutPrefix(uri, "tcp:")
	if !ok {
		return bad("want tcp:HOST:PORT")
	}
	if strings.ContainsAny(rest, ",?/ \t\n") {
		return bad("options are not accepted")
	}
	h, p, err := net.SplitHostPort(rest)
	if err != nil || h == "" {
		return bad("want tcp:HOST:PORT")
	}
	port, err := strconv.Atoi(p)
	if err != nil || strconv.Itoa(port) != p {
		return bad("port %q is not a number", p)
	}
	if !ports.contains(port) {
		return bad("port %d is outside migration_ports %s", port, ports)
	}
	if isUnixAddr(dest) {
		if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
			return bad("a destination on a unix socket must listen on loopback")
		}
		return h, nil
	}
	want, _, err := net.SplitHostPort(dest)
	if err != nil {
		return bad("destination address is not host:port")
	}
	if !sameHost(h, want) {
		return bad("host %s is not the destination's %s", h, want)
	}
	return h, nil
}

func sameHost(a, b string) bool {
	ia, ib := net.ParseIP(a), net.ParseIP(b)
	if ia != nil || ib != nil {
		return ia != nil && ib != nil && ia.Equal(ib)
	}
	return strings.EqualFold(a, b)
}

// isUnixAddr mirrors how the API client (internal/jsonapi) tells a socket
// path from host:port.
func isUnixAddr(addr string) bool {
	return strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, ".")
}

// freePort finds a port in ports that addr can listen on now (QEMU then
// listens there).
func freePort(addr string, ports portRange) (int, error) {
	l, port, err := listenMigration(addr, ports)
	if err != nil {
		return 0, err
	}
	l.Close()
	return port, nil
}

package migstream

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ErrBadURI: a destination answered a stream address that is not a TCP
// port of its own host in the migration range.
var ErrBadURI = errors.New("not a migration address of the destination")

// CheckURI accepts, as the stream address a destination hostd
// answered, only QEMU's "tcp:HOST:PORT" (IPv6 in brackets) with HOST the
// address the source was told to migrate to and PORT in ports. The URI
// goes into QMP migrate on the source, where "exec:" would run a shell
// command as root and "unix:"/"fd:" would send the VM elsewhere.
// dest is the destination hostd's API address: host:port, or a unix
// socket path, a same-host setting where only loopback is accepted.
func CheckURI(uri, dest string, ports PortRange) (host string, err error) {
	bad := func(why string, args ...any) (string, error) {
		return "", fmt.Errorf("destination %s answered migration address %q: %s: %w",
			dest, uri, fmt.Sprintf(why, args...), ErrBadURI)
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
	if !ports.Contains(port) {
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

package hostd

import (
	"fmt"

	"github.com/symvirt/symvirt/hostd/migstream"
)

// checkMigrationURI checks the stream address a destination answered
// (migstream.CheckURI); a bad one is refused as unauthorized: it could
// send the VM elsewhere or run a command as root.
func checkMigrationURI(uri, dest string, ports migstream.PortRange) (string, error) {
	host, err := migstream.CheckURI(uri, dest, ports)
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, ErrUnauthorized)
	}
	return host, nil
}

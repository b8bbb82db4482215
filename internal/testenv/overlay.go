package testenv

import (
	"fmt"
	"testing"
)

// VXLAN joins bridge br of every namespace into one L2 segment over VXLAN
// (network identifier vni, UDP 4789) between their underlay addresses
// (addr[ns], on a routed cluster network): hosts on different L2 segments,
// as in production, where a VM keeps its IP and MAC on whichever host it
// runs. Broadcast and unknown destinations go to every peer (head-end
// replication); the bridges learn where each MAC is, and a VM that moved
// is found again by its announcement after the migration.
func VXLAN(t testing.TB, br string, vni int, addr map[*NetNS]string) {
	dev := fmt.Sprintf("vx%d", vni)
	for ns, local := range addr {
		Run(t, "ip", "-n", ns.Name, "link", "add", dev, "type", "vxlan", "id", fmt.Sprint(vni),
			"local", local, "dstport", "4789")
		for peer, remote := range addr {
			if peer != ns {
				Run(t, "bridge", "-n", ns.Name, "fdb", "append", "00:00:00:00:00:00", "dev", dev, "dst", remote)
			}
		}
		Run(t, "ip", "-n", ns.Name, "link", "set", dev, "master", br, "up")
	}
}

package taint

import "net/netip"

// IsOutside reports whether traffic with peer taints, by the rule the BPF
// programs apply: peer is not loopback, not unspecified, not the local
// address of the same socket (a connection to the machine's own address),
// and not in ignore.
func IsOutside(peer, local netip.Addr, ignore []netip.Prefix) bool {
	peer = peer.Unmap()
	if !peer.IsValid() || peer.IsLoopback() || peer.IsUnspecified() {
		return false
	}
	if local.IsValid() && !local.IsUnspecified() && local.Unmap() == peer {
		return false
	}
	for _, p := range ignore {
		if p.Contains(peer) {
			return false
		}
	}
	return true
}

// Package blockmirror carries a storage migration's NBD connections
// between two hostds. The destination's QEMU serves its new disks over
// NBD on a unix socket in the VM's private directory, never on the
// network; the source's QEMU writes each disk's mirror into one end of a
// socketpair. hostd joins the two: the destination listens on a port of
// the migration range and admits only connections that pass mutual TLS
// with the source hostd's certificate (when migration TLS is on) and then
// present the migration's one-time token, at most one per disk; every
// other connection is closed before QEMU sees a byte of it.
//
// Contract: Serve admits at most Conns connections, each only after its
// TLS check (if any) and its token; it stops listening once they are
// admitted, when the wait ends or when Close is called, and Close ends
// every joined connection too. Connect presents the token after the
// handshake. Join copies both ways until either side ends. The package
// decides nothing about the VM: hostd does.
package blockmirror

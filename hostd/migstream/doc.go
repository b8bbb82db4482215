// Package migstream holds the parts of a migration stream that need no VM:
// the port range incoming streams listen in, the check of the stream
// address a destination answers, and, with migration TLS, the tunnel that
// carries QEMU's stream between two hostds (QEMU reads or writes one end
// of a socketpair; hostd moves it over mutual TLS in full records).
//
// Contract: CheckURI accepts only "tcp:HOST:PORT" with HOST the
// destination's own host (loopback for a destination on a unix socket)
// and PORT in the range; anything else, which QMP migrate could turn into
// a shell command or another target, wraps ErrBadURI. Listen and FreePort
// pick a port of the range only. An acceptor (StartAcceptor) feeds QEMU
// from exactly one connection, a hostd certificate of the named source;
// every other one is closed unread (ErrNotSource, logged). An Out tunnel
// reports success (Finish) only once the destination closed the stream
// after reading all of it; any failure closes QEMU's end, which fails its
// migration. The package decides nothing about the VM: hostd does.
package migstream

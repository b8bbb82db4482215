// Package migstream holds the parts of a migration stream that need no VM:
// the port range incoming streams listen in, the check of the stream
// address a destination answers, and the socketpair through which hostd
// carries QEMU's stream itself (migration TLS).
//
// Contract: CheckURI accepts only "tcp:HOST:PORT" with HOST the
// destination's own host (loopback for a destination on a unix socket)
// and PORT in the range; anything else, which QMP migrate could turn into
// a shell command or another target, wraps ErrBadURI. Listen and FreePort
// pick a port of the range only. PassToQEMU leaves QEMU holding its end of
// the pair under the given name and the caller the other end.
package migstream

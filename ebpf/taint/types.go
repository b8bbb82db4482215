package taint

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"
)

// Kinds of taint: why a process depends on the world outside the machine.
const (
	KindConnect  = "connect"  // TCP connect to an outside peer
	KindAccept   = "accept"   // TCP connection accepted from an outside peer
	KindUDP      = "udp"      // UDP datagram sent to or received from an outside peer
	KindTCP      = "tcp"      // data on an outside TCP connection it neither connected nor accepted (fd passing)
	KindInherit  = "inherit"  // forked by a tainted process (Via)
	KindIPC      = "ipc"      // read data that a tainted process (Via) wrote into a local channel
	KindExisting = "existing" // had an outside connection when the tracker started
)

// Channels an ipc taint can come through.
const (
	ChannelUnix     = "unix"     // unix socket (stream, seqpacket or datagram)
	ChannelPipe     = "pipe"     // pipe or FIFO
	ChannelLoopback = "loopback" // TCP connection within the machine (127.0.0.0/8, ::1 or its own address)
)

// Taint says why one process (thread group) is tainted.
type Taint struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	Kind string `json:"kind"`
	// Peer is the outside peer for connect, accept, udp, tcp and existing
	// (zero for a udp receive whose sender was not asked for), and for
	// inherit and ipc the peer of the taint it derives from.
	Peer netip.AddrPort `json:"peer"`
	// Via is the source process for inherit (the parent) and ipc (the
	// writer); 0 otherwise.
	Via int `json:"via,omitempty"`
	// Channel is the local channel of an ipc taint.
	Channel string    `json:"channel,omitempty"`
	Since   time.Time `json:"since"`
}

// Options configure Open.
type Options struct {
	// Ignore lists peers whose traffic never taints, e.g. the management
	// network. Loopback and the machine's own address never taint.
	Ignore []netip.Prefix
	// Logger gets load, attach and event-loss messages; nil discards them.
	Logger *slog.Logger
	// IPCExempt names processes (by comm, as in /proc/PID/comm, at most 15
	// bytes) that reading from a tainted process over local IPC does not
	// taint. Hubs that everyone talks to would otherwise pass one taint on
	// to all their clients and children; DefaultIPCExempt lists the usual
	// ones. Their own network exchanges still taint them.
	IPCExempt []string
	// NoScan skips looking for TCP and UDP connections to outside peers that
	// processes already have when the tracker starts (KindExisting).
	NoScan bool
}

// DefaultIPCExempt lists the local hubs of a Debian system: PID 1 (reads
// sd_notify messages), the journal and the D-Bus daemons.
var DefaultIPCExempt = []string{"systemd", "systemd-journal", "dbus-daemon", "dbus-broker", "dbus-broker-lau"}

// Source is what Serve publishes; *Tracker implements it.
type Source interface {
	Tainted() []Taint
	IsTainted(pid int) (Taint, bool)
	Reset(pid int) error
	Counts() (tainted, events uint64)
}

// ErrUnsupported is returned by Open where the tracker cannot run (not
// linux/amd64).
var ErrUnsupported = errors.New("taint: eBPF taint tracking needs linux/amd64")

var _ Source = (*Tracker)(nil)

// Package guestd is the symvirt agent inside the VM ("symvirt guestd"). It
// answers the host's rounds (guestproto) and brings the guest to a safe
// point before the host detaches passthrough devices, checkpoints or
// migrates, and tells everyone in the guest the outcome afterwards.
//
// # Round
//
// On PREPARE(id, op, deadline, devices), within the deadline (less a margin
// for the answer's trip):
//
//  1. The hook socket makes the round pending (applications see it in POLL,
//     WAIT, STATUS), and the hook scripts of HookDir run in name order with
//     "prepare OP" (env SYMVIRT_PHASE, SYMVIRT_OP, SYMVIRT_ID). A script
//     exiting non-zero, or overrunning, refuses the round, naming it.
//  2. Every registered application must call SYNC; the first missing at the
//     deadline refuses the round ("application X did not reach a safe
//     point") and will learn "aborted" from its next SYNC.
//  3. NIC hand-off: each device's NIC (found by MAC) that is a slave of an
//     active-backup bond stops being its active slave (and primary), so
//     that traffic already runs over the other slave when the device goes.
//  4. sync(2).
//  5. READY. The round stays READY across host connections: after a restore
//     or a migration, HELLO_ACK reports it (state "ready", id, op).
//
// A refused round is undone at once by the guest itself (NICs, "resume OP
// aborted" to the scripts that prepared, applications get "aborted"); the
// host needs no ABORT. On RESUME(id, outcome), or ABORT: bonds get a NIC
// back (the old one if it never left; else, within NICWait, every new
// ethernet NIC not in another bond is enslaved and the first becomes primary
// and active), scripts run with "resume OP OUTCOME", applications' SYNCs
// return OUTCOME, and DONE goes to the host. The state machine is the
// round type (round.go); the agent does its I/O.
//
// # Channel
//
// virtio-serial (the port named org.symvirt.0; EOF means "no host now", so
// the agent polls; garbage makes it resynchronise on the next HELLO), vsock
// (listens on a port), or unix:PATH (listens on a socket; tests). On sockets
// a new connection replaces the current one, and a protocol error closes
// it. Every new host begins with HELLO; a PREPARE still in progress when it
// comes is cancelled and undone.
//
// # Hook socket
//
// A unix socket (default /run/symvirt/hook.sock, mode 0660) speaking lines
// of at most 4096 bytes; a longer line or an unknown command gets "ERR ..."
// and the connection closed:
//
//	HELLO <name> <pid>  -> OK 1            register: rounds wait for this connection's SYNC
//	POLL                -> IDLE | PENDING <op> <id>
//	WAIT                -> PENDING <op> <id>   (blocks until one is)
//	SYNC                -> OUTCOME <outcome> <op> <id>   (blocks until the round ends)
//	                       OUTCOME aborted <op> <id>     (at once: a round it missed was aborted)
//	                       OUTCOME none - -              (nothing pending, nothing missed)
//	STATUS              -> STATUS idle | STATUS pending <op> <id> synced=<n>/<registered>
//
// A connection that missed an aborted round (registered, or told PENDING,
// and no SYNC before it ended) sees that round as PENDING in POLL/WAIT until
// its SYNC returns "aborted". Any client may POLL, WAIT, STATUS or SYNC; only
// registered ones are waited for, and closing the connection unregisters.
// Another command while WAIT or SYNC blocks is a protocol error. The Go
// client is package hookclient; the C one is libsymvirt.
//
// # Metrics
//
// With Config.MetricsListen: symvirt_guestd_rounds_total{op,outcome},
// symvirt_guestd_registered_apps, symvirt_guestd_host_sessions_total on
// /metrics.
package guestd

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
//  5. With freeze (op migrate only): freeze the processes that do not depend
//     on the world outside the VM (see Dependency-aware migration).
//  6. READY, with the guest's timing: its time from PREPARE to READY, and
//     the registered applications' own time to reach their safe point (the
//     longest; from the round's start, or from the PENDING answer to a WAIT
//     blocked when it started, to the SYNC), so that the host can tell what
//     cooperating costs from what the applications take. The round stays
//     READY across host connections: after a restore or a migration,
//     HELLO_ACK reports it (state "ready", id, op).
//
// A refused round is undone at once by the guest itself (frozen processes,
// NICs, "resume OP aborted" to the scripts that prepared, applications get
// "aborted"); the host needs no ABORT. On RESUME(id, outcome), or ABORT:
// (RESUME only) the guest's wall clock is first stepped to the host's
// (host_time_ns, when they are 250 ms or more apart: a restored, migrated
// or stopped-and-saved VM comes back with its clock where it stopped; the
// monotonic clock is left alone); frozen processes are thawed, bonds get a
// NIC back (the old one if it never left; else, within NICWait, every new
// ethernet NIC not in another bond is enslaved and the first becomes
// primary and active), scripts run with "resume OP OUTCOME", applications'
// SYNCs return OUTCOME, and DONE
// goes to the host. The state machine is the
// round type (round.go); the agent does its I/O.
//
// # Channel
//
// virtio-serial (the port named org.symvirt.0, made root-only 0600 before
// it is opened; EOF means "no host now", so the agent waits for the
// driver's SIGIO that a host connected, re-reading every 200 ms failing
// that; garbage makes
// it resynchronise on the next HELLO), vsock (listens on a port; only the
// host, CID 2, from a privileged port below 1024), or unix:PATH (listens on
// a 0600 socket; tests). On sockets a new connection never replaces a live
// one (it is refused unless the current one ends within takeoverWait), a
// host silent for 3 PING intervals is dropped, and a protocol error closes
// the connection. Every new host begins with HELLO; a PREPARE still in progress when it
// comes is cancelled and undone.
//
// # Hook socket
//
// A unix socket (default /run/symvirt/hook.sock, mode 0660, group root or
// Config.HookGroup) speaking lines of at most 4096 bytes. Slots are bounded:
// 256 in all, the last 16 for root only, and Config.HookMaxPerUID (default
// 64) per non-root user (SO_PEERCRED), so one user cannot crowd out the
// applications; a refused client gets "ERR too many ...". A client that has
// not registered and sends nothing for 10 s gets "ERR idle without HELLO"
// and is disconnected (one blocked in WAIT or SYNC is not idle); a longer line or an unknown command gets "ERR ..."
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
// Hook scripts (Config.HookDir) run as root, so only those owned by root
// and writable by root alone, in a directory of the same (symlinks
// followed), run; others are skipped with a warning.
//
// # Dependency-aware migration
//
// During a live migration only the processes that depend on the world
// outside the VM must keep running; the others can be frozen for the whole
// migration, so that they stop dirtying memory and pre-copy converges fast
// (Nocentino & Ruth 2009). Which process depends on the outside is what the
// eBPF taint tracker (package ebpf/taint; Config.Taint) tells; guestd runs
// it with taint.DefaultIPCExempt and serves it on Config.TaintSocket for
// `symvirt taint`. If it cannot load, guestd runs without it, and a PREPARE
// with freeze is REFUSED ("dependency-aware migration needs the taint
// tracker: <why>") before anything is done, as it is without a cgroup v2
// freezer.
//
// Freezing uses the cgroup v2 freezer on Config.CgroupRoot (default: the
// first cgroup2 mount of /proc/self/mountinfo, else one mounted at
// DefaultCgroupMount). Every process is frozen except: PID 1, guestd and its
// ancestors, the readers of guestd's stdout/stderr pipes (guestd would block
// on its own log), zombies, kernel threads (PF_KTHREAD or no
// /proc/PID/exe), the tainted, the processes named (comm) in
// Config.FreezeAllow (default DefaultFreezeAllow: the hubs that tainted
// processes use without tainting them, i.e. those of
// taint.DefaultIPCExempt and systemd-resolved), and those the freezer
// could not put back: in another cgroup namespace, in a threaded cgroup,
// or refused by the kernel (logged).
// Applications blocked in their SYNC are frozen too: harmlessly.
//
// The freezer records each process (pid, start time, cgroup from the "0::"
// line of /proc/PID/cgroup) in Config.FreezeState, then moves it whole (its
// tgid into cgroup.procs) into <root>/symvirt-frozen, writes 1 to
// cgroup.freeze and waits (at most 5 s; a task busy in the kernel freezes
// when it leaves it) for cgroup.events to say "frozen 1". Then, and every
// 250 ms while frozen, a member the tracker reports tainted (its event was
// still on its way) is moved back, which thaws it: a tainted process is
// never left frozen. The READY log reports how many are frozen.
//
// Thawing writes 0 to cgroup.freeze first (whatever else fails, everything
// runs again), then moves each member back to its recorded cgroup (a child
// forked between the move and the freeze goes to its parent's, an
// unrecorded one to the root; a cgroup that is gone is replaced by its
// nearest existing ancestor, one that refuses the process by the root),
// and removes the cgroup and the state file. It happens on RESUME and ABORT
// (before the NICs, scripts and applications), when the prepare fails or
// runs past its deadline, after Config.FreezeMax frozen (a host that
// vanished after READY; the round stays READY and the migration merely
// goes on without freezing), and when guestd stops. A guestd that starts
// thaws and restores first whatever its state file (or, without one, a
// non-empty symvirt-frozen cgroup) says an earlier guestd left frozen; that
// is the only protection against a crash, so guestd must be restarted when
// it dies (systemd Restart=always).
//
// Limits: processes forked during the round by running (tainted or
// exempted) processes are not frozen; a process tainted while it waits to
// be frozen is released within 250 ms; an untainted process that a tainted
// one depends on through a channel that passes no taint on (shared memory,
// files, local UDP, signals; see the tracker's limits) is frozen, and the
// tainted one may stall on it until the thaw (add it to
// Config.FreezeAllow); a frozen FUSE server blocks whoever touches its
// file system; on systemd hosts, units whose every process is frozen have
// an empty cgroup meanwhile (systemd tracks their main PID); the allowlist
// matches comm, which any process can take.
//
// # Metrics
//
// With Config.MetricsListen: symvirt_guestd_rounds_total{op,outcome},
// symvirt_guestd_registered_apps, symvirt_guestd_host_sessions_total,
// symvirt_guestd_frozen_processes and, with the tracker,
// symvirt_guestd_tainted_processes and symvirt_guestd_taint_events_total on
// /metrics.
package guestd

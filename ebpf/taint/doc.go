// Package taint tracks, with eBPF, which processes of a machine depend on
// the world outside it. In a symvirt guest, guestd runs a Tracker: during a
// live migration only tainted processes must keep running; the others can be
// frozen so that they stop dirtying memory (dependency-aware live migration,
// Nocentino & Ruth 2009).
//
// # Model
//
// The unit is the process (thread group, "PID" below). A process becomes
// tainted, and stays so until it exits or an operator resets it, when:
//
//   - connect: it starts a TCP connection to an outside peer (seen at the
//     SYN_SENT transition, inside connect(2));
//   - accept: accept(2) returns a TCP connection from an outside peer;
//   - udp: it sends a UDP datagram to an outside peer (sendto/sendmsg
//     address, or the connected peer), or receives one from an outside peer
//     (the address recvfrom/recvmsg reports, or the connected peer); a
//     datagram read from an unconnected, not-loopback-bound socket without
//     asking for the sender taints with an unknown (zero) peer, to be safe;
//   - tcp: it sends or receives data on an outside TCP connection that it
//     neither connected nor accepted (a socket passed to it);
//   - inherit: a tainted process forks it (Via is the parent);
//   - ipc: it reads data that a tainted process (Via) wrote into a unix
//     socket (stream, seqpacket or datagram), a pipe or FIFO, or a TCP
//     connection within the machine ("loopback" channel);
//   - existing: when the tracker starts, it holds an established TCP or
//     connected UDP socket to an outside peer (from /proc; NoScan skips it).
//
// "Outside" means: not loopback (127.0.0.0/8, ::1), not unspecified, not the
// socket's own local address (a connection to the machine's own IP), and not
// in Options.Ignore (e.g. the management network). The first reason is kept:
// a tainted process is not re-tainted. The process running the tracker
// (guestd) is never tainted.
//
// Each taint records why: kind, the peer (for inherit and ipc, the peer of
// the taint it derives from), the source process, the channel and the time.
// The BPF programs keep the taints in a kernel hash map keyed by PID and send
// each taint and each exit of a tainted process through a ring buffer to the
// Tracker, which keeps its own map. If the ring buffer overflows, the Tracker
// re-reads the kernel map.
//
// # How propagation works
//
// A tainted process that writes (write, writev, pwritev2, send*, sendfile,
// splice, tee, vmsplice) marks the channel its data goes into, in an LRU map
// of marks holding the writer's PID:
//
//   - pipe/FIFO: the inode (pointer and inode number);
//   - unix socket: the writer's own socket; every skb a unix socket sends
//     belongs to (skb->sk) the sending socket, so the reader finds the mark
//     through the skb it reads, whichever socket type and whether the sender
//     is connected or named the destination;
//   - loopback TCP: the connection's 4-tuple (and network namespace) as the
//     receiver sees it; the mark goes when the connection closes.
//
// An untainted process that reads checks the mark: pipes at the exit of
// read-like syscalls (read, readv, preadv2, recv*, splice, tee, sendfile),
// unix and TCP sockets per skb copied to user space (tracepoint
// skb_copy_datagram_iovec, which also fires for io_uring and any recv
// flavour). Marks are set at syscall entry, so a reader blocked on a pipe
// sees the mark when the data arrives. Marks on a socket are dropped when a
// new socket appears at the same kernel address (socket, socketpair and
// accept exits), so a freed socket's mark cannot taint its successor.
//
// Options.IPCExempt names processes that ipc never taints (hubs such as
// PID 1, which reads every service's sd_notify messages, or the D-Bus
// daemon); DefaultIPCExempt lists the usual ones. guestd should pass it,
// else one tainted notify or D-Bus message taints PID 1 and through it
// every service started afterwards.
//
// # Kernel interface
//
// Only raw tracepoints (BPF_PROG_TYPE_RAW_TRACEPOINT, Linux 4.17): sys_enter
// and sys_exit (filtered on x86_64 syscall numbers), sched_process_fork,
// sched_process_exit, inet_sock_set_state and skb_copy_datagram_iovec. They
// need neither kprobes (CONFIG_KPROBES is off on the symvirt development
// kernel), nor tracefs, nor BPF trampolines (no fentry/fexit/LSM), nor
// cgroup v2. Helpers: map operations, bpf_get_current_pid_tgid,
// bpf_get_current_task, bpf_get_current_comm, bpf_probe_read_kernel/user
// (5.5), bpf_ktime_get_boot_ns and the ring buffer (5.8); no kfuncs, no
// bpf_loop, no bpf_get_current_task_btf. Kernel structs are read with CO-RE
// against /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF), so the kernel
// needs BTF; the relocations are checked against Linux 6.1 (Debian cloud)
// and 6.18. Thread-group exit is told from thread exit by signal->live
// reaching 0, which do_exit decrements before the tracepoint.
//
// # Limits
//
//   - Only what happens after Open is seen, except existing outside
//     connections found in /proc (of the tracker's network namespace only).
//     Data received over IPC before Open does not taint.
//   - x86_64 only (syscall numbers, pt_regs); 32-bit (compat) processes are
//     ignored; kernel threads are never tainted.
//   - Data that does not go through the hooked syscalls or skb copies is not
//     seen: shared memory (mmap, SysV/POSIX shm, memfd), files, io_uring
//     reads and writes of pipes, io_uring send of UDP, splice out of a unix
//     socket, signals, ptrace. A tainted process writing a file that an
//     untainted one reads does not pass the taint on.
//   - UDP between two local processes never passes a taint on (only TCP,
//     unix sockets and pipes do); other protocols (raw, ICMP, SCTP, packet
//     sockets, vsock, netlink) neither taint nor propagate.
//   - Sockets of another network namespace of the same machine (containers
//     on a bridge) count as outside; add their subnets to Ignore if they
//     should not.
//   - Marks are kept in an LRU map of 65536 entries: with more channels in
//     use at once, the oldest marks are evicted and their readers missed.
//     The taints map holds 65536 processes; more are counted, not kept.
//   - Propagation is per process and over-approximate: a reader becomes
//     tainted when it reads anything from a marked channel, even data
//     written before the writer was tainted or by another (untainted)
//     holder of the same socket or pipe.
//   - A unix socket shared by several processes (e.g. inherited across
//     fork) carries one mark: after a tainted holder writes, readers of
//     what any holder writes are tainted.
//   - A process that exec's stays tainted (same PID); Comm is read from
//     /proc when listing, so it shows the new program.
package taint

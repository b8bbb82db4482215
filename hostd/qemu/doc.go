// Package qemu supervises one QEMU process of a VM: its command line, its
// guest RAM file, starting it, adopting it again after hostd restarted,
// noticing its exit, stopping and killing it. It knows nothing of leases,
// steps, jobs or what the VM is doing; the caller decides which Process
// is a VM's current one and persists what must survive (PID, generation,
// the RAM file's identity).
//
// Contract:
//   - Start runs QEMU paused (-S), sandboxed (seccomp: no exec, no set*uid;
//     -runas, or -run-with user= from QEMU 9.1 on, when a user is given;
//     QEMU older than 7.2 is refused), in a process group of its own so
//     signals to hostd's never reach it, and returns only once its QMP
//     monitor answers; a QEMU that did not get there is killed and the
//     error (wrapping sentinel.ErrQEMUStart) carries the tail of its log.
//     No shell is involved and every spec value is escaped.
//   - Adopt only connects to a running QEMU that Owns confirmed and that
//     maps the RAM file recorded for it; it never restarts one. Exited is
//     closed once the process is gone, whether Start or Adopt made it.
//   - TakeOver (warm restart) moves only device state from a stopped QEMU
//     into a new one started on the same RAM file; until it succeeds the
//     old QEMU holds the VM.
//   - Guest RAM on shared memory is a file hostd creates itself (O_EXCL,
//     O_NOFOLLOW, 0600) in a 0700 directory of its own and hands to QEMU
//     as an open descriptor. OpenRAM reuses a file at the path only if it
//     is the RAMFile the caller recorded, OpenWarmRAM only if the running
//     QEMU also maps it; anything else there is refused with
//     sentinel.ErrRAMFile and never removed. RAMFile.Remove deletes only
//     the file recorded: the caller calls it once no QEMU of the VM needs
//     the file (stopped, killed, crashed), never for a warm restart's
//     handover, where the new QEMU maps the same file.
package qemu

// Package snapshot moves a VM's state between QEMU and a checkpoint's
// state file through QEMU's migration stream, over QMP: a stopped VM's
// Save, a restore's Load, and a live save (Arm, then Precopy or
// Background) with its snapshot point. It knows nothing of VMs, leases or
// manifests beyond a file's digest.
//
// A live save copies a running VM by Precopy (the default under KVM): its
// memory is copied while it runs, then QEMU stops it for the last pages
// (the point: 3-10 ms at any size here) and hostd runs it again. Any other
// takes a Background snapshot: QEMU saves the devices, write-protects the
// guest's RAM (16-45 ms for 2 GiB here) and runs it while its memory, as
// it was, streams on, each first write of the guest to a page waiting for
// the stream. Not precopy under TCG on QEMU 7.2: its dirty tracking there
// loses writes (hostd's TestPrecopyImageExactWhereAutoTakesIt).
//
// A job's precopy starts at its arm (Copy): QEMU copies the VM's RAM once,
// then copies on what the guest dirties, its switchover held until the
// point step's Precopy releases it (QEMU's switchover-ack, 8.1 and later:
// hostd, as the copy's destination, acks on the migration's return path).
// So every VM's bulk copy is behind before any point, and the job's points
// are as close together as its point steps, not each VM's whole copy
// apart. Where QEMU cannot hold a copy, Precopy copies it all.
//
// Contract:
//   - The caller owns the QMP client: the package issues commands and
//     subscribes to events on it, never closes it, and uses it until Save
//     or Load returns, or a live save's stream is Done.
//   - Save writes a new file, which QEMU never opens, synced with its
//     directory, and returns its size and sha256 as QEMU wrote it; on error
//     the file may be left, partial: the caller removes its directory.
//   - Load hands QEMU exactly the bytes it hashes and fails with
//     sentinel.ErrChecksum unless they are the wanted digest's, whatever
//     QEMU said: the caller kills that QEMU before the guest runs.
//   - A live save's directory is the package's from Arm to the stream's
//     end. Arm reserves the state file's room, so a full disk fails before
//     the VM is touched (QEMU 7.2 meeting a write error in a background
//     snapshot leaves the guest write-protected for good). At the stream's
//     end the file is truncated to what QEMU wrote, synced and hashed, then
//     Options.Finish runs (never for a precopy whose point was not taken
//     with its Cut up), then Done. Disarm, a Precopy or Background that
//     fails, and a stream that fails (or whose Finish does) remove the
//     directory; the VM runs on either way. Disarm cancels a held copy and
//     turns the hold off: a later migration to a real QEMU would wait for
//     an ack it does not send.
//   - Cancel: ctx bounds Save and Load (QEMU's migration is cancelled),
//     and a live save's wait for its point: ended before the point, it
//     cancels the stream and waits for its end; after it the stream runs
//     on until Done.
//   - Background points, and the points of copies held at their
//     switchover, are taken one at a time on a machine (a lock file shared
//     by its hostds); a VM's QEMU threads go first around its point and its
//     stream yields to every vCPU.
package snapshot

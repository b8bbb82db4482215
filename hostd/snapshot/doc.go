// Package snapshot moves a VM's state between QEMU and a checkpoint's
// state file through QEMU's migration stream, driven over QMP: a stopped
// VM's save (Save), a restore's load (Load), and a live save (Arm, then
// Background or Precopy) with its snapshot point. It knows nothing of VMs,
// leases or manifests beyond a file's digest: the caller names the QEMU
// process, the paths, and what to do with a finished file.
//
// Contract:
//   - The caller owns the QMP client: the package issues commands and
//     subscribes to events on it, never closes it, and uses it until Save
//     or Load returns, or a live save's stream is Done.
//   - Save writes a new file (never an existing one) that QEMU never opens,
//     synced with its directory, and returns its size and sha256 as QEMU
//     wrote it. On error the file may be left, partial: the caller removes
//     its directory.
//   - Load hands QEMU exactly the bytes it hashes and fails with
//     sentinel.ErrChecksum unless they are the wanted digest's, whatever
//     QEMU said of them: the caller kills that QEMU before the guest runs.
//   - A live save's directory is the package's from Arm to the stream's end:
//     Arm reserves the state file's room (a full disk fails before the VM is
//     touched: QEMU 7.2 must never meet a write error in a background
//     snapshot); at the stream's end the file is truncated to what QEMU
//     wrote, synced and hashed, then Options.Finish runs (the caller's
//     manifest), then Done. Disarm, a Background or Precopy that fails, and a
//     stream that fails (or whose Finish does) remove the directory; the VM
//     runs on either way.
//   - Cancel: ctx bounds Save and Load (QEMU's migration is cancelled). For
//     a live save it bounds only the wait for the snapshot point: ended
//     before the point, it cancels the stream and waits for its end; after
//     the point the stream runs on its own until Done.
//   - Snapshot points of background saves are taken one at a time on a
//     machine (a lock file shared by its hostds), and a VM's QEMU threads go
//     first around its point while its stream yields to every vCPU.
package snapshot

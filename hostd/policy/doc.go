// Package policy confines what a VM spec may make QEMU, which runs as root,
// open on this host: kernels, initrds and disks only as regular files
// inside the configured directories (symlinks resolved, qcow2 backing and
// data files followed), host hardware only from the host's device pools,
// no host files or hostd-owned backends in device properties, tap names
// and forwarded ports the policy allows, another QEMU binary only from
// QEMUDirs.
//
// Contract: Check (a spec hostd takes), CheckRestore (a checkpoint's spec,
// disks inside the checkpoint directory) and CheckBinary refuse with an
// error that names the spec field and wraps sentinel.ErrUnauthorized (not
// allowed here) or sentinel.ErrInvalidSpec (not well-formed). A path
// outside the allowed directories is refused before it is looked at, so
// an answer never tells whether a host file exists. SetDefaults must have
// run first: it resolves the directories the checks compare with.
package policy

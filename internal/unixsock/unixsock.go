// Package unixsock creates the daemons' API unix sockets so that no other
// local user can ever reach them, and checks the state directories they
// live in.
//
// A socket bound at its final path and chmod-ed afterwards exists for a
// moment with the umask's mode (0777 under umask 0): a local user who
// connects in that window keeps the connection, with root's API behind it.
// Setting the umask instead is process-wide and races with every other
// goroutine creating files. So the socket is bound inside a fresh 0700
// directory no one else can enter, made 0600, and only then renamed to its
// final path.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// Listen binds a unix socket at path that only the caller's user can
// connect to from the instant it appears there. Any failure is an error:
// a socket whose mode could not be set is never served.
func Listen(path string) (*net.UnixListener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".sock-") // 0700 whatever the umask
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	// The listener's own unlink on Close would aim at tmp, gone by then.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: set mode 0600: %w", path, err)
	}
	// rename replaces a stale socket (or anything else planted there,
	// a symlink included, never following it).
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
}

// ErrUnsafeDir reports a state directory another user could tamper with.
var ErrUnsafeDir = errors.New("unsafe state directory")

// PrivateDir makes dir exist as a directory owned by the caller with mode
// 0700. An existing one must be a real directory (not a symlink) owned by
// the caller and not writable by anyone else; a group- or world-readable
// one is narrowed to 0700.
func PrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	if st.Mode()&os.ModeSymlink != 0 || !st.IsDir() {
		return fmt.Errorf("state dir %s: %w: not a directory (a symlink or a file)", dir, ErrUnsafeDir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("state dir %s: %w: owned by uid %d, not %d", dir, ErrUnsafeDir, sys.Uid, os.Geteuid())
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state dir %s: %w: mode %04o lets others write in it (chmod 0700 after checking its contents)",
			dir, ErrUnsafeDir, st.Mode().Perm())
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state dir %s: set mode 0700: %w", dir, err)
		}
	}
	return nil
}

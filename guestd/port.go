package guestd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// ErrPortUnsafe: the virtio-serial port's node is not a character device,
// or another process holds it open.
var ErrPortUnsafe = errors.New("guestd: virtio-serial port unsafe")

// portMode is the only mode the port's node may have: a guest user who can
// open it speaks for the host to guestd (or, holding it open, keeps guestd
// off it: the driver allows one opener at a time). Whoever made the node
// (devtmpfs, udev, an initramfs's mknod) may have been looser.
const portMode = 0o600

// openPort makes the port's node root-only and opens it. The node is
// fixed by path before the open, so that a user who holds it now cannot
// open it again once they let go, and checked again on the open file.
func openPort(path string) (*os.File, error) {
	if fi, err := os.Stat(path); err == nil && fi.Mode()&fs.ModeCharDevice != 0 {
		if err := restrictNode(path, fi); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, syscall.EBUSY) {
		return nil, fmt.Errorf("%w: %s is held open by another process", ErrPortUnsafe, path)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && fi.Mode()&fs.ModeCharDevice == 0 {
		err = fmt.Errorf("%w: %s is %v, not a character device", ErrPortUnsafe, path, fi.Mode().Type())
	}
	if err == nil {
		err = restrictNode(path, fi)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// restrictNode makes the node root:root portMode if it is not already.
func restrictNode(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: %s: no owner information", ErrPortUnsafe, path)
	}
	if st.Uid != 0 || st.Gid != 0 {
		if err := os.Chown(path, 0, 0); err != nil {
			return fmt.Errorf("%w: %s is owned by %d:%d and cannot be given to root: %v", ErrPortUnsafe, path, st.Uid, st.Gid, err)
		}
	}
	if fi.Mode().Perm() != portMode {
		if err := os.Chmod(path, portMode); err != nil {
			return fmt.Errorf("%w: %s is mode %v and cannot be made %o: %v", ErrPortUnsafe, path, fi.Mode().Perm(), portMode, err)
		}
	}
	return nil
}

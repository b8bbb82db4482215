package guestd

import (
	"fmt"
	"math"
	"net"
	"os/user"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Hook socket admission defaults. Every client holds a slot until it hangs
// up, and a guest user who can reach the socket must not take them all
// from the real applications.
const (
	// DefaultHookMaxPerUID bounds one non-root user's connections (an MPI
	// job's ranks share a user: room for a large node).
	DefaultHookMaxPerUID = 64
	// hookRootReserve slots of maxHookConns only root may take.
	hookRootReserve = 16
	// defaultHookIdle drops a client that has not registered (HELLO) and
	// sends nothing for this long; a registered one, or one blocked in
	// WAIT or SYNC, is not idle.
	defaultHookIdle = 10 * time.Second
)

// unknownUID is the uid of a client whose credentials cannot be read: it is
// limited like any non-root user.
const unknownUID = math.MaxUint32

// HookOption configures NewHookServer.
type HookOption func(*hookOptions)

type hookOptions struct {
	gid       int // socket group; -1: guestd's own
	maxPerUID int
	idle      time.Duration
}

// WithHookGroup makes the socket root:gid 0660, so that members of the
// group (e.g. the user an MPI job runs as) can register; everyone else is
// kept out by the socket's mode.
func WithHookGroup(gid int) HookOption { return func(o *hookOptions) { o.gid = gid } }

// WithHookMaxPerUID bounds the connections of one non-root user (default
// DefaultHookMaxPerUID).
func WithHookMaxPerUID(n int) HookOption { return func(o *hookOptions) { o.maxPerUID = n } }

// withHookIdle sets how long an unregistered client may send nothing.
func withHookIdle(d time.Duration) HookOption { return func(o *hookOptions) { o.idle = d } }

// peerCred is the client's pid and uid from SO_PEERCRED (0 and unknownUID
// if unavailable).
func peerCred(c *net.UnixConn) (pid int, uid uint32) {
	uid = unknownUID
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, uid
	}
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid, uid = int(cred.Pid), cred.Uid
		}
	})
	return pid, uid
}

// admitLocked says why a new client of uid cannot have a slot ("" if it
// can). s.mu is held.
func (s *HookServer) admitLocked(uid uint32) string {
	switch {
	case s.closed:
		return "server closing"
	case len(s.conns) >= maxHookConns:
		return fmt.Sprintf("too many clients (%d)", maxHookConns)
	case uid == 0:
		return ""
	case len(s.conns) >= maxHookConns-hookRootReserve:
		return fmt.Sprintf("too many clients (%d; the rest are kept for root)", maxHookConns-hookRootReserve)
	case s.perUID[uid] >= s.opts.maxPerUID:
		return fmt.Sprintf("too many connections for uid %d (%d)", uid, s.opts.maxPerUID)
	}
	return ""
}

// lookupGroup resolves a group name or number.
func lookupGroup(name string) (int, error) {
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("guestd: hook group: %w", err)
	}
	return strconv.Atoi(g.Gid)
}

// hookOptionsFrom turns cfg's hook socket settings into options.
func hookOptionsFrom(cfg Config) ([]HookOption, error) {
	var opts []HookOption
	if cfg.HookGroup != "" {
		gid, err := lookupGroup(cfg.HookGroup)
		if err != nil {
			return nil, err
		}
		opts = append(opts, WithHookGroup(gid))
	}
	if cfg.HookMaxPerUID > 0 {
		opts = append(opts, WithHookMaxPerUID(cfg.HookMaxPerUID))
	}
	return opts, nil
}

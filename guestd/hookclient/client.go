// Package hookclient is the Go client of guestd's hook socket, for
// applications that cooperate with symvirt: they learn that an operation
// (checkpoint, migration, ...) is pending, call Sync at a safe point and get
// the operation's outcome when Sync returns.
//
// Contract: one Client is one connection, and commands run one at a time
// (calls are serialised). Open with a name registers the application: from
// then on every round waits (up to its deadline) for this connection's Sync.
// Close, or the process dying, unregisters it. Wait and Sync block until the
// server answers or ctx ends; ending them by ctx breaks the connection (the
// protocol has no cancel), so the Client must be re-opened.
//
// The socket path defaults to $SYMVIRT_HOOK_SOCKET, else DefaultPath.
package hookclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultPath is where guestd listens unless configured otherwise.
const DefaultPath = "/run/symvirt/hook.sock"

// ioTimeout bounds the non-blocking commands and the handshake.
const ioTimeout = 5 * time.Second

const maxLine = 4096

// Errors.
var (
	// ErrProtocol: the server said something this client does not
	// understand (or "ERR ..."); the connection is closed.
	ErrProtocol = errors.New("hookclient: protocol error")
	// ErrClosed: the Client was closed, or broken by an earlier error or a
	// cancelled Wait/Sync.
	ErrClosed = errors.New("hookclient: connection closed")
)

// Path is $SYMVIRT_HOOK_SOCKET if set, else DefaultPath.
func Path() string {
	if p := os.Getenv("SYMVIRT_HOOK_SOCKET"); p != "" {
		return p
	}
	return DefaultPath
}

// Pending is an operation the guest is preparing for.
type Pending struct {
	Op, ID string
}

// Outcome is what Sync returns: Outcome is "checkpointed", "restored",
// "migrated", "rejuvenated", "aborted", "failed", or "none" (nothing was
// pending; Op and ID are then "-").
type Outcome struct {
	Outcome, Op, ID string
}

// Status is the server's view of the current round.
type Status struct {
	Pending            bool
	Op, ID             string
	Synced, Registered int
}

// Client is one connection to the hook socket.
type Client struct {
	mu     sync.Mutex
	conn   net.Conn
	br     *bufio.Reader
	broken error
}

// Open connects to the hook socket at path ("" means Path()). A non-empty
// name registers the application under it (1..64 printable characters, no
// spaces); an empty name connects without registering, for tools that only
// look.
func Open(path, name string) (*Client, error) {
	if path == "" {
		path = Path()
	}
	conn, err := net.DialTimeout("unix", path, ioTimeout)
	if err != nil {
		return nil, fmt.Errorf("hookclient: %w", err)
	}
	c := &Client{conn: conn, br: bufio.NewReaderSize(conn, maxLine+1)}
	if name == "" {
		return c, nil
	}
	if strings.ContainsAny(name, " \t\r\n") || len(name) > 64 {
		conn.Close()
		return nil, fmt.Errorf("hookclient: invalid application name %q", name)
	}
	f, err := c.roundTrip(context.Background(), fmt.Sprintf("HELLO %s %d", name, os.Getpid()), true)
	if err != nil {
		return nil, err
	}
	if len(f) != 2 || f[0] != "OK" || f[1] != "1" {
		return nil, c.fail(fmt.Errorf("%w: HELLO answered %q", ErrProtocol, strings.Join(f, " ")))
	}
	return c, nil
}

// Close closes the connection, unregistering the application.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		c.broken = ErrClosed
	}
	return c.conn.Close()
}

func (c *Client) fail(err error) error {
	if c.broken == nil {
		c.broken = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.conn.Close()
	return err
}

// roundTrip sends one command and reads one answer line, split in fields.
// bounded commands get ioTimeout; the others last until ctx ends.
func (c *Client) roundTrip(ctx context.Context, cmd string, bounded bool) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, c.broken
	}
	deadline := time.Time{}
	if bounded {
		deadline = time.Now().Add(ioTimeout)
	}
	if err := c.conn.SetDeadline(deadline); err != nil {
		return nil, c.fail(fmt.Errorf("hookclient: %w", err))
	}
	if !bounded {
		// The protocol cannot cancel WAIT or SYNC: on ctx's end, unblock
		// the read and give the connection up.
		stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	if _, err := c.conn.Write([]byte(cmd + "\n")); err != nil {
		return nil, c.fail(c.ctxErr(ctx, err))
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = fmt.Errorf("%w: answer too long", ErrProtocol)
		}
		return nil, c.fail(c.ctxErr(ctx, err))
	}
	s := strings.TrimSuffix(string(line[:len(line)-1]), "\r")
	f := strings.Split(s, " ")
	if f[0] == "ERR" {
		return nil, c.fail(fmt.Errorf("%w: server: %s", ErrProtocol, strings.TrimPrefix(s, "ERR ")))
	}
	return f, nil
}

func (c *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("hookclient: %w", ctx.Err())
	}
	return fmt.Errorf("hookclient: %w", err)
}

func parsePending(f []string) (Pending, bool, error) {
	switch {
	case len(f) == 1 && f[0] == "IDLE":
		return Pending{}, false, nil
	case len(f) == 3 && f[0] == "PENDING":
		return Pending{Op: f[1], ID: f[2]}, true, nil
	}
	return Pending{}, false, fmt.Errorf("%w: %q", ErrProtocol, strings.Join(f, " "))
}

// Poll tells without blocking whether an operation is pending (or was
// aborted before this connection synced: Sync then returns "aborted").
func (c *Client) Poll() (Pending, bool, error) {
	f, err := c.roundTrip(context.Background(), "POLL", true)
	if err != nil {
		return Pending{}, false, err
	}
	p, ok, err := parsePending(f)
	if err != nil {
		return p, ok, c.failLocked(err)
	}
	return p, ok, nil
}

// Wait blocks until an operation is pending or ctx ends.
func (c *Client) Wait(ctx context.Context) (Pending, error) {
	f, err := c.roundTrip(ctx, "WAIT", false)
	if err != nil {
		return Pending{}, err
	}
	p, ok, err := parsePending(f)
	if err == nil && !ok {
		err = fmt.Errorf("%w: WAIT answered IDLE", ErrProtocol)
	}
	if err != nil {
		return Pending{}, c.failLocked(err)
	}
	return p, nil
}

// Sync reports a safe point and blocks until the pending operation's outcome
// (Outcome "none" at once if nothing is pending) or ctx's end.
func (c *Client) Sync(ctx context.Context) (Outcome, error) {
	f, err := c.roundTrip(ctx, "SYNC", false)
	if err != nil {
		return Outcome{}, err
	}
	if len(f) != 4 || f[0] != "OUTCOME" {
		return Outcome{}, c.failLocked(fmt.Errorf("%w: %q", ErrProtocol, strings.Join(f, " ")))
	}
	return Outcome{Outcome: f[1], Op: f[2], ID: f[3]}, nil
}

// Status returns the server's view of the current round.
func (c *Client) Status() (Status, error) {
	f, err := c.roundTrip(context.Background(), "STATUS", true)
	if err != nil {
		return Status{}, err
	}
	switch {
	case len(f) == 2 && f[0] == "STATUS" && f[1] == "idle":
		return Status{}, nil
	case len(f) == 5 && f[0] == "STATUS" && f[1] == "pending" && strings.HasPrefix(f[4], "synced="):
		a, b, ok := strings.Cut(strings.TrimPrefix(f[4], "synced="), "/")
		n, err1 := strconv.Atoi(a)
		m, err2 := strconv.Atoi(b)
		if ok && err1 == nil && err2 == nil {
			return Status{Pending: true, Op: f[2], ID: f[3], Synced: n, Registered: m}, nil
		}
	}
	return Status{}, c.failLocked(fmt.Errorf("%w: %q", ErrProtocol, strings.Join(f, " ")))
}

func (c *Client) failLocked(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fail(err)
}

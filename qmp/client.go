package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

const (
	// DefaultMaxMessageSize bounds a single QMP message read from QEMU.
	DefaultMaxMessageSize = 64 << 20
	// DefaultEventBuffer is the per-subscriber event channel capacity.
	DefaultEventBuffer = 256
)

// errClosed is the disconnect cause recorded when Close is called.
var errClosed = errors.New("closed by client")

// Option configures a Client.
type Option func(*options)

type options struct {
	logger      *slog.Logger
	eventBuffer int
	maxMsg      int
}

// WithLogger makes the client log protocol-level diagnostics (dropped events,
// unmatched replies, disconnect cause) at debug/warn level. Default: none.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithEventBuffer sets the capacity of each subscription channel
// (default DefaultEventBuffer). Events that do not fit are dropped.
func WithEventBuffer(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.eventBuffer = n
		}
	}
}

// WithMaxMessageSize sets the largest single message accepted from QEMU
// (default DefaultMaxMessageSize). A larger message is a fatal protocol
// error: the client disconnects with ErrMessageTooLarge.
func WithMaxMessageSize(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxMsg = n
		}
	}
}

// Client is a QMP client. It is safe for concurrent use. See the package
// documentation for the contract.
type Client struct {
	rwc  io.ReadWriteCloser
	opts options
	log  *slog.Logger

	version goqmp.Version
	caps    []string

	greeting chan greeting // reader -> New, once

	writeSem chan struct{} // 1-slot semaphore serialising writes

	nextID atomic.Uint64

	mu      sync.Mutex
	closed  bool
	err     error
	pending map[string]*call
	order   []string // ids of pending calls in send order (for id-less replies)
	subs    map[*subscription]struct{}
	// finalizing: devices DeviceDel saw leave QEMU's device tree whose
	// DEVICE_DELETED has not come yet; each channel closes when it does.
	finalizing map[string]chan struct{}

	dropped atomic.Uint64

	done      chan struct{}
	closeOnce sync.Once
}

type greeting struct {
	QMP struct {
		Version      goqmp.Version `json:"version"`
		Capabilities []string      `json:"capabilities"`
	} `json:"QMP"`
}

// reply is one command reply as read from the monitor.
type reply struct {
	raw []byte          // whole message (what go-qemu's raw API expects)
	ret json.RawMessage // "return" member
	err *Error          // non-nil for an error reply
}

type call struct {
	cmd string
	ch  chan reply // capacity 1
}

type subscription struct {
	names   map[string]bool // nil: all events
	ch      chan goqmp.Event
	dropped atomic.Uint64
	once    sync.Once
}

// envelope is used to classify an incoming message.
type envelope struct {
	QMP    json.RawMessage `json:"QMP"`
	Event  string          `json:"event"`
	ID     json.RawMessage `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// Dial connects to a QMP monitor at network/addr ("unix", "/path/qmp.sock"
// or "tcp", "host:port"), reads the greeting and negotiates capabilities.
// The whole sequence is bounded by ctx; ctx is not retained afterwards.
func Dial(ctx context.Context, network, addr string, opts ...Option) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s %s: %w", network, addr, err)
	}
	c, err := New(ctx, conn, opts...)
	if err != nil {
		return nil, err // New closed conn
	}
	return c, nil
}

// New runs the QMP handshake (greeting + qmp_capabilities) over rwc, bounded
// by ctx, and returns a connected Client that owns rwc. On error rwc is closed.
// When rwc is a *net.UnixConn, ExecuteWithFile/GetFD can pass descriptors.
func New(ctx context.Context, rwc io.ReadWriteCloser, opts ...Option) (*Client, error) {
	o := options{eventBuffer: DefaultEventBuffer, maxMsg: DefaultMaxMessageSize}
	for _, opt := range opts {
		opt(&o)
	}
	log := o.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		rwc:        rwc,
		opts:       o,
		log:        log,
		greeting:   make(chan greeting, 1),
		writeSem:   make(chan struct{}, 1),
		pending:    make(map[string]*call),
		subs:       make(map[*subscription]struct{}),
		finalizing: make(map[string]chan struct{}),
		done:       make(chan struct{}),
	}
	go c.readLoop()

	select {
	case g := <-c.greeting:
		c.version = g.QMP.Version
		c.caps = g.QMP.Capabilities
	case <-ctx.Done():
		c.shutdown(ctx.Err())
		return nil, fmt.Errorf("qmp: waiting for greeting: %w", ctx.Err())
	case <-c.done:
		return nil, fmt.Errorf("qmp: waiting for greeting: %w", c.Err())
	}
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.shutdown(fmt.Errorf("handshake failed: %w", err))
		return nil, err
	}
	return c, nil
}

// Close closes the transport. Pending calls fail with ErrDisconnected, Done is
// closed and subscription channels are closed. It is safe to call repeatedly.
func (c *Client) Close() error {
	return c.shutdown(errClosed)
}

// Done returns a channel closed when the monitor goes away (EOF, read or
// write error, protocol error, Close).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while connected; afterwards an error wrapping
// ErrDisconnected and the cause (e.g. io.EOF).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Version returns the QEMU version from the greeting.
func (c *Client) Version() goqmp.Version { return c.version }

// Capabilities returns the capabilities QEMU advertised in its greeting
// (e.g. "oob"). None of them are enabled by this client.
func (c *Client) Capabilities() []string { return append([]string(nil), c.caps...) }

// DroppedEvents returns how many events were dropped, summed over all
// subscriptions, because a subscriber's channel was full.
func (c *Client) DroppedEvents() uint64 { return c.dropped.Load() }

// shutdown records cause, closes the transport and wakes everybody. Only the
// first call has an effect; it returns the transport's Close error.
func (c *Client) shutdown(cause error) error {
	var cerr error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		if cause == nil {
			cause = io.EOF
		}
		c.err = fmt.Errorf("%w: %w", ErrDisconnected, cause)
		for s := range c.subs {
			s.once.Do(func() { close(s.ch) })
		}
		clear(c.subs)
		c.mu.Unlock()
		cerr = c.rwc.Close()
		close(c.done)
		c.log.Debug("qmp: disconnected", "cause", cause)
	})
	return cerr
}

// readLoop owns the read side of the monitor: it reads every message, hands
// the greeting to New, replies to their callers and events to subscribers.
// It never blocks on anything but the transport.
func (c *Client) readLoop() {
	r := bufio.NewReaderSize(c.rwc, 64<<10)
	gotGreeting := false
	for {
		msg, err := readMessage(r, c.opts.maxMsg)
		if err != nil {
			if err == io.EOF && len(bytes.TrimSpace(msg)) > 0 {
				// A final message without newline before EOF: process it.
				if !c.handle(msg, &gotGreeting) {
					return
				}
			}
			c.shutdown(err)
			return
		}
		if !c.handle(msg, &gotGreeting) {
			return
		}
	}
}

// handle processes one message; it returns false if the client was shut down.
func (c *Client) handle(msg []byte, gotGreeting *bool) bool {
	msg = bytes.TrimSpace(msg)
	if len(msg) == 0 {
		return true
	}
	var env envelope
	if err := json.Unmarshal(msg, &env); err != nil {
		c.shutdown(fmt.Errorf("malformed message from monitor: %w", err))
		return false
	}
	switch {
	case len(env.QMP) > 0 && !*gotGreeting:
		var g greeting
		if err := json.Unmarshal(msg, &g); err != nil {
			c.shutdown(fmt.Errorf("malformed greeting: %w", err))
			return false
		}
		*gotGreeting = true
		c.greeting <- g
	case !*gotGreeting:
		c.shutdown(fmt.Errorf("expected greeting, got %.200q", msg))
		return false
	case env.Event != "":
		var ev goqmp.Event
		if err := json.Unmarshal(msg, &ev); err != nil {
			c.log.Warn("qmp: malformed event", "err", err)
			return true
		}
		c.dispatchEvent(ev)
	case env.Return != nil || env.Error != nil:
		rp := reply{raw: msg, ret: env.Return}
		if env.Error != nil {
			rp.err = &Error{Class: env.Error.Class, Desc: env.Error.Desc}
		}
		c.deliver(env.ID, rp)
	default:
		c.log.Debug("qmp: ignoring unknown message", "msg", string(msg))
	}
	return true
}

func (c *Client) dispatchEvent(ev goqmp.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		if s.names != nil && !s.names[ev.Event] {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			s.dropped.Add(1)
			c.dropped.Add(1)
			c.log.Debug("qmp: subscriber channel full, event dropped", "event", ev.Event)
		}
	}
}

func (c *Client) deliver(rawID json.RawMessage, rp reply) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var id string
	if len(rawID) > 0 {
		if err := json.Unmarshal(rawID, &id); err != nil {
			c.log.Debug("qmp: reply with foreign id", "id", string(rawID))
			return
		}
	} else if len(c.order) > 0 {
		// QEMU omits the id when it could not parse the request; it answers
		// in order, so the oldest outstanding call is the one.
		id = c.order[0]
	}
	cl, ok := c.pending[id]
	if !ok {
		c.log.Debug("qmp: reply for unknown or abandoned call", "id", id)
		return
	}
	c.removePendingLocked(id)
	if rp.err != nil {
		rp.err.Cmd = cl.cmd
	}
	cl.ch <- rp // capacity 1, never blocks
}

func (c *Client) removePendingLocked(id string) {
	delete(c.pending, id)
	for i, v := range c.order {
		if v == id {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
}

// EventTime is when QEMU emitted ev, on the host's clock.
func EventTime(ev goqmp.Event) time.Time {
	return time.Unix(ev.Timestamp.Seconds, ev.Timestamp.Microseconds*1000)
}

// Subscribe returns a channel of events whose name is one of names (all
// events if none) and a cancel func that unsubscribes and closes the channel.
// The channel is buffered (WithEventBuffer); when it is full, further events
// for this subscriber are dropped and counted (DroppedEvents), never blocking
// the reader. The channel is closed when the client disconnects.
func (c *Client) Subscribe(names ...string) (events <-chan goqmp.Event, cancel func()) {
	s := &subscription{ch: make(chan goqmp.Event, c.opts.eventBuffer)}
	if len(names) > 0 {
		s.names = make(map[string]bool, len(names))
		for _, n := range names {
			s.names[n] = true
		}
	}
	c.mu.Lock()
	if c.closed {
		s.once.Do(func() { close(s.ch) })
	} else {
		c.subs[s] = struct{}{}
	}
	c.mu.Unlock()
	cancel = func() {
		c.mu.Lock()
		delete(c.subs, s)
		s.once.Do(func() { close(s.ch) })
		c.mu.Unlock()
	}
	return s.ch, cancel
}

// request is the wire form of a command.
type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        string          `json:"id"`
}

// Execute runs cmd with args (nil for none; any JSON-marshalable value) and,
// if result is non-nil, unmarshals the "return" member into it. QMP errors
// are returned as *Error; other failures are wrapped as "qmp CMD: ...".
func (c *Client) Execute(ctx context.Context, cmd string, args any, result any) error {
	return c.execute(ctx, cmd, args, nil, result)
}

// ExecuteWithFile is Execute, sending f's descriptor with the command as
// SCM_RIGHTS ancillary data (as "getfd"/"add-fd" expect). It requires the
// transport to be a *net.UnixConn, else it fails with ErrFDPassingUnsupported.
func (c *Client) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File, result any) error {
	if f == nil {
		return fmt.Errorf("qmp %s: nil file", cmd)
	}
	return c.execute(ctx, cmd, args, f, result)
}

func (c *Client) execute(ctx context.Context, cmd string, args any, f *os.File, result any) error {
	id := "symvirt-" + strconv.FormatUint(c.nextID.Add(1), 10)
	req := request{Execute: cmd, ID: id}
	if args != nil {
		a, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp %s: encoding arguments: %w", cmd, err)
		}
		if !bytes.Equal(a, []byte("null")) {
			req.Arguments = a
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: encoding request: %w", cmd, err)
	}
	rp, err := c.roundTrip(ctx, cmd, id, b, f)
	if err != nil {
		return err
	}
	if rp.err != nil {
		return rp.err
	}
	if result != nil && len(rp.ret) > 0 {
		if err := json.Unmarshal(rp.ret, result); err != nil {
			return fmt.Errorf("qmp %s: decoding return value: %w", cmd, err)
		}
	}
	return nil
}

// roundTrip sends b (which must carry "id": id) and waits for the reply.
func (c *Client) roundTrip(ctx context.Context, cmd, id string, b []byte, f *os.File) (reply, error) {
	if err := ctx.Err(); err != nil {
		return reply{}, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if f != nil {
		if _, ok := c.rwc.(*net.UnixConn); !ok {
			return reply{}, fmt.Errorf("qmp %s: %w (transport is %T)", cmd, ErrFDPassingUnsupported, c.rwc)
		}
	}
	cl := &call{cmd: cmd, ch: make(chan reply, 1)}
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return reply{}, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.pending[id] = cl
	c.order = append(c.order, id)
	c.mu.Unlock()
	abandon := func() {
		c.mu.Lock()
		c.removePendingLocked(id)
		c.mu.Unlock()
	}

	b = append(b, '\n')
	if err := c.write(ctx, b, f); err != nil {
		abandon()
		return reply{}, fmt.Errorf("qmp %s: %w", cmd, err)
	}

	select {
	case rp := <-cl.ch:
		return rp, nil
	case <-ctx.Done():
		abandon()
		select { // the reply may have raced with cancellation
		case rp := <-cl.ch:
			return rp, nil
		default:
		}
		return reply{}, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	case <-c.done:
		select {
		case rp := <-cl.ch:
			return rp, nil
		default:
		}
		return reply{}, fmt.Errorf("qmp %s: %w", cmd, c.Err())
	}
}

// write sends b, holding the write semaphore. Waiting for the semaphore and,
// if the transport supports write deadlines, the write itself honour ctx.
func (c *Client) write(ctx context.Context, b []byte, f *os.File) error {
	select {
	case c.writeSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.Err()
	}
	defer func() { <-c.writeSem }()
	if c.isClosed() {
		return c.Err()
	}

	dl, hasDeadline := c.rwc.(interface{ SetWriteDeadline(time.Time) error })
	var interrupted chan struct{}
	stop := func() bool { return true }
	if hasDeadline && ctx.Done() != nil {
		interrupted = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			defer close(interrupted)
			_ = dl.SetWriteDeadline(time.Unix(1, 0))
		})
	}

	var n int
	var err error
	if f != nil {
		n, err = c.writeWithFile(b, f)
	} else {
		n, err = c.rwc.Write(b)
	}

	if !stop() {
		<-interrupted
		_ = dl.SetWriteDeadline(time.Time{})
		if err != nil && n == 0 && ctx.Err() != nil {
			return ctx.Err() // nothing was written: the stream is intact
		}
	}
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		// A partial or failed write leaves the stream in an unknown state.
		c.shutdown(fmt.Errorf("write: %w", err))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.Err()
	}
	return nil
}

func (c *Client) writeWithFile(b []byte, f *os.File) (int, error) {
	uc := c.rwc.(*net.UnixConn)
	sc, err := f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("file descriptor: %w", err)
	}
	var n int
	var werr error
	cerr := sc.Control(func(fd uintptr) {
		n, _, werr = uc.WriteMsgUnix(b, syscall.UnixRights(int(fd)), nil)
	})
	if cerr != nil {
		return 0, fmt.Errorf("file descriptor: %w", cerr)
	}
	if werr == nil && n < len(b) {
		// The descriptor travelled with the first byte; send the rest plainly.
		m, err := uc.Write(b[n:])
		n += m
		werr = err
	}
	return n, werr
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// readMessage reads one newline-terminated message of at most max bytes,
// however large the bufio buffer is.
func readMessage(r *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) > max {
			return nil, fmt.Errorf("%w (%d bytes)", ErrMessageTooLarge, max)
		}
		if err == nil && buf == nil {
			// Fast path: the whole message was in the buffer.
			return bytes.Clone(chunk), nil
		}
		buf = append(buf, chunk...)
		if err == bufio.ErrBufferFull {
			continue
		}
		return buf, err
	}
}

package guestproto

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the host's options.
const (
	DefaultPingInterval = 5 * time.Second
	DefaultWriteTimeout = 5 * time.Second
	// The protocol needs a handful of frames per round plus heartbeats
	// (a few per second even with short test intervals); these are far
	// above that, and far below what a flooding guest sends.
	DefaultInboundRate  = 100 // frames per second, sustained
	DefaultInboundBurst = 200 // frames
)

// HostOption configures a Host.
type HostOption func(*hostConfig)

type hostConfig struct {
	pingInterval time.Duration
	writeTimeout time.Duration
	rate         float64
	burst        int
	now          func() time.Time
}

// WithPingInterval sets how often the host sends PING once the handshake is
// done (0 disables its own PINGs; guest PINGs are still answered).
func WithPingInterval(d time.Duration) HostOption {
	return func(c *hostConfig) { c.pingInterval = d }
}

// WithWriteTimeout bounds each write on transports with SetWriteDeadline
// (net.Conn, pollable files). A write that times out kills the channel.
func WithWriteTimeout(d time.Duration) HostOption {
	return func(c *hostConfig) { c.writeTimeout = d }
}

// WithInboundLimit sets the token bucket on frames from the guest: perSecond
// sustained, burst at once. Exceeding it kills the channel with ErrFlood.
func WithInboundLimit(perSecond float64, burst int) HostOption {
	return func(c *hostConfig) { c.rate, c.burst = perSecond, burst }
}

// WithClock sets the wall clock a RESUME carries (default time.Now; tests
// give a skewed one).
func WithClock(now func() time.Time) HostOption {
	return func(c *hostConfig) { c.now = now }
}

// HelloAck is the guest's answer to the handshake.
type HelloAck struct {
	Version int
	State   string // one of the State* constants
	// The round the guest answered READY to and that has not been resumed
	// or aborted yet (State == StateReady); empty otherwise.
	PendingID, PendingOp string
	// Usage is the guest's memory report (zero: it sent none).
	Usage Usage
}

// Prepare asks the guest to reach a safe point for an operation.
type Prepare struct {
	ID, Op string
	// How long the guest may take. The guest answers REFUSED rather than
	// overrun it; the host waits a little longer than this for the answer.
	Deadline time.Duration
	Devices  []Device
	// Freeze asks for a dependency-aware migration (Op must be OpMigrate):
	// with READY the guest has also frozen every process that does not
	// depend on the world outside the VM (per its eBPF taint tracker), so
	// that they stop dirtying memory; RESUME or ABORT thaws them. A guest
	// without a tracker refuses; a guest too old to know the field ignores
	// it and answers READY without freezing.
	Freeze bool
}

// RefusedError is the guest's REFUSED answer to a PREPARE. It matches
// ErrRefused.
type RefusedError struct {
	ID, Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("guestproto: guest refused round %s: %s", e.ID, e.Reason)
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Host is the host side of one guest channel. Its methods are safe for
// concurrent use; requests are served one at a time in call order.
type Host struct {
	rwc io.ReadWriteCloser
	log *slog.Logger
	cfg hostConfig

	out  chan []byte   // frames for the writer
	pong chan uint64   // a PONG to send; one pending at most (coalesced)
	req  chan struct{} // held by the request in flight
	done chan struct{}
	once sync.Once

	handshaken atomic.Bool
	lastSeen   atomic.Int64 // unix nanoseconds of the last frame from the guest
	seq        atomic.Uint64

	mu        sync.Mutex
	err       error   // why the channel died
	waiter    *waiter // the reply the request in flight waits for
	helloSent bool
	recentIDs [8]string // ids sent lately: replies to them are late, not bogus
	nextID    int
}

type waiter struct {
	match func(Message) bool
	ch    chan Message // capacity 1: the reader never blocks on it
}

var errClosedByHost = errors.New("closed by host")

// NewHost takes ownership of rwc and starts serving it. logger may be nil.
func NewHost(rwc io.ReadWriteCloser, logger *slog.Logger, opts ...HostOption) *Host {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg := hostConfig{
		pingInterval: DefaultPingInterval,
		writeTimeout: DefaultWriteTimeout,
		rate:         DefaultInboundRate,
		burst:        DefaultInboundBurst,
		now:          time.Now,
	}
	for _, o := range opts {
		o(&cfg)
	}
	h := &Host{
		rwc:  rwc,
		log:  logger,
		cfg:  cfg,
		out:  make(chan []byte),
		pong: make(chan uint64, 1),
		req:  make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	go h.readLoop()
	go h.writeLoop()
	return h
}

// Done is closed when the channel is dead: closed by either side, a read or
// write error, or a protocol violation by the guest.
func (h *Host) Done() <-chan struct{} { return h.done }

// Err tells why the channel died (nil while it is alive).
func (h *Host) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// LastSeen is when the last frame (of any type) came from the guest; zero if
// none did. A paused VM sends nothing, so silence alone is not death.
func (h *Host) LastSeen() time.Time {
	ns := h.lastSeen.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Close closes the channel. Requests in flight return ErrClosed.
func (h *Host) Close() error {
	h.die(errClosedByHost)
	return nil
}

func (h *Host) die(err error) {
	h.once.Do(func() {
		h.mu.Lock()
		h.err = err
		h.mu.Unlock()
		close(h.done)
		cerr := h.rwc.Close()
		switch {
		case errors.Is(err, errClosedByHost):
			h.log.Debug("guest channel closed", "close_err", cerr)
		case errors.Is(err, io.EOF):
			h.log.Info("guest channel ended", "err", err)
		default:
			h.log.Warn("guest channel dropped", "err", err)
		}
	})
}

func (h *Host) closedErr() error {
	return fmt.Errorf("%w: %w", ErrClosed, h.Err())
}

func (h *Host) readLoop() {
	fr := NewFrameReader(bufio.NewReaderSize(h.rwc, 4096))
	lim := NewLimiter(h.cfg.rate, h.cfg.burst)
	for {
		m, err := fr.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("guest closed the channel: %w", err)
			} else {
				err = fmt.Errorf("read: %w", err)
			}
			h.die(err)
			return
		}
		now := time.Now()
		h.lastSeen.Store(now.UnixNano())
		if !lim.Allow(now) {
			h.die(fmt.Errorf("%w: more than %d frames at once or %.0f/s", ErrFlood, h.cfg.burst, h.cfg.rate))
			return
		}
		if err := h.handle(m); err != nil {
			h.die(err)
			return
		}
	}
}

// handle dispatches one inbound frame. It never blocks: the reader must keep
// draining the guest whatever the writer or the requests do.
func (h *Host) handle(m Message) error {
	if m.Type != TypeHelloAck && !h.handshaken.Load() {
		// On virtio-serial, frames the guest wrote for a previous host may
		// still be in the pipe; the guest likewise ignores all but HELLO
		// from a new host.
		h.log.Debug("frame before handshake dropped", "type", m.Type, "id", m.ID)
		return nil
	}
	switch m.Type {
	case TypePing:
		select {
		case h.pong <- m.Seq:
		default: // a PONG is already due; one answers both
		}
		return nil
	case TypePong:
		return nil
	case TypeHelloAck, TypeReady, TypeRefused, TypeDone:
		h.mu.Lock()
		w := h.waiter
		if w != nil && w.match(m) {
			h.waiter = nil
			w.ch <- m
			h.mu.Unlock()
			return nil
		}
		known := h.helloSent
		if m.Type != TypeHelloAck {
			known = h.sentLately(m.ID)
		}
		h.mu.Unlock()
		if known {
			// An answer that came after its request gave up (deadline).
			h.log.Warn("late reply from guest dropped", "type", m.Type, "id", m.ID)
			return nil
		}
		return fmt.Errorf("%w: %s for round %q never asked about", ErrUnexpected, m.Type, m.ID)
	default:
		return fmt.Errorf("%w: guest sent %s", ErrUnexpected, m.Type)
	}
}

func (h *Host) sentLately(id string) bool {
	for _, s := range h.recentIDs {
		if s != "" && s == id {
			return true
		}
	}
	return false
}

func (h *Host) writeLoop() {
	var tick <-chan time.Time
	if h.cfg.pingInterval > 0 {
		t := time.NewTicker(h.cfg.pingInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		var m Message
		select {
		case <-h.done:
			return
		case f := <-h.out:
			h.write(f)
			continue
		case seq := <-h.pong:
			m = Message{V: Version, Type: TypePong, Seq: seq}
		case <-tick:
			if !h.handshaken.Load() {
				// Before HELLO the guest discards everything else.
				continue
			}
			m = Message{V: Version, Type: TypePing, Seq: h.seq.Add(1)}
		}
		f, err := Encode(m)
		if err != nil {
			h.die(err) // cannot happen: our own heartbeat is valid
			return
		}
		h.write(f)
	}
}

func (h *Host) write(frame []byte) {
	if d, ok := h.rwc.(interface{ SetWriteDeadline(time.Time) error }); ok && h.cfg.writeTimeout > 0 {
		_ = d.SetWriteDeadline(time.Now().Add(h.cfg.writeTimeout))
	}
	if _, err := h.rwc.Write(frame); err != nil {
		h.die(fmt.Errorf("write: %w", err))
	}
}

// request sends m and waits for the first inbound message that match accepts.
func (h *Host) request(ctx context.Context, m Message, match func(Message) bool) (Message, error) {
	select {
	case h.req <- struct{}{}:
	case <-ctx.Done():
		return Message{}, context.Cause(ctx)
	case <-h.done:
		return Message{}, h.closedErr()
	}
	defer func() { <-h.req }()

	frame, err := Encode(m)
	if err != nil {
		return Message{}, err
	}
	w := &waiter{match: match, ch: make(chan Message, 1)}
	h.mu.Lock()
	h.waiter = w
	if m.Type == TypeHello {
		h.helloSent = true
	} else {
		h.recentIDs[h.nextID] = m.ID
		h.nextID = (h.nextID + 1) % len(h.recentIDs)
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		if h.waiter == w {
			h.waiter = nil
		}
		h.mu.Unlock()
	}()

	select {
	case h.out <- frame:
	case <-ctx.Done():
		return Message{}, fmt.Errorf("sending %s: %w", m.Type, context.Cause(ctx))
	case <-h.done:
		return Message{}, h.closedErr()
	}
	select {
	case r := <-w.ch:
		return r, nil
	case <-ctx.Done():
		return Message{}, fmt.Errorf("no answer to %s: %w", m.Type, context.Cause(ctx))
	case <-h.done:
		select {
		case r := <-w.ch: // it came just before the channel died
			return r, nil
		default:
			return Message{}, h.closedErr()
		}
	}
}

// Handshake sends HELLO and waits for HELLO_ACK. It must succeed before the
// other requests, on every new connection. A guest of another version gets
// its channel closed and ErrVersion.
func (h *Host) Handshake(ctx context.Context) (HelloAck, error) {
	m, err := h.request(ctx, Message{V: Version, Type: TypeHello, Seq: h.seq.Add(1)},
		func(m Message) bool { return m.Type == TypeHelloAck })
	if err != nil {
		return HelloAck{}, fmt.Errorf("guestproto: handshake: %w", err)
	}
	ack := HelloAck{Version: m.V, State: m.State, PendingID: m.ID, PendingOp: m.Op, Usage: m.Usage}
	if m.V != Version {
		err := fmt.Errorf("guestproto: handshake: %w: guest speaks %d, host %d", ErrVersion, m.V, Version)
		h.die(err)
		return ack, err
	}
	h.handshaken.Store(true)
	h.log.Debug("guest handshake", "state", ack.State, "pending_id", ack.PendingID, "pending_op", ack.PendingOp)
	return ack, nil
}

// prepareGrace is how much longer than the PREPARE deadline the host waits
// for the answer: the guest answers by the deadline, the grace covers the
// trip.
func prepareGrace(d time.Duration) time.Duration {
	return min(max(d/4, 100*time.Millisecond), 2*time.Second)
}

// Prepare sends PREPARE and waits until READY (nil), REFUSED (a *RefusedError
// matching ErrRefused), p.Deadline plus a short grace or ctx's end
// (context.DeadlineExceeded or ctx's error), or the channel's death
// (ErrClosed). On anything but nil and ErrRefused the host must Abort(p.ID).
func (h *Host) Prepare(ctx context.Context, p Prepare) error {
	_, err := h.PrepareTimed(ctx, p)
	return err
}

// prepare sends PREPARE and returns the guest's READY or REFUSED.
func (h *Host) prepare(ctx context.Context, p Prepare) (Message, error) {
	if !h.handshaken.Load() {
		return Message{}, fmt.Errorf("guestproto: prepare %s: %w", p.ID, ErrNoHandshake)
	}
	m := Message{V: Version, Type: TypePrepare, ID: p.ID, Op: p.Op,
		DeadlineMS: p.Deadline.Milliseconds(), Devices: p.Devices, Freeze: p.Freeze}
	if p.Deadline > 0 && m.DeadlineMS == 0 {
		m.DeadlineMS = 1
	}
	ctx, cancel := context.WithTimeout(ctx, p.Deadline+prepareGrace(p.Deadline))
	defer cancel()
	r, err := h.request(ctx, m, func(r Message) bool {
		return (r.Type == TypeReady || r.Type == TypeRefused) && r.ID == p.ID
	})
	if err != nil {
		return Message{}, fmt.Errorf("guestproto: prepare %s: %w", p.ID, err)
	}
	return r, nil
}

// Resume sends RESUME(id, outcome) with the host's wall clock (the guest
// steps its own to it) and waits for DONE(id).
func (h *Host) Resume(ctx context.Context, id, outcome string) error {
	return h.finish(ctx, Message{V: Version, Type: TypeResume, ID: id, Outcome: outcome,
		HostTimeNS: h.cfg.now().UnixNano()})
}

// Abort sends ABORT(id, reason) and waits for DONE(id). It is valid while the
// guest prepares, after READY, and for a round the guest no longer knows.
func (h *Host) Abort(ctx context.Context, id, reason string) error {
	reason = TruncateReason(reason)
	return h.finish(ctx, Message{V: Version, Type: TypeAbort, ID: id, Reason: reason})
}

func (h *Host) finish(ctx context.Context, m Message) error {
	what := "resume"
	if m.Type == TypeAbort {
		what = "abort"
	}
	if !h.handshaken.Load() {
		return fmt.Errorf("guestproto: %s %s: %w", what, m.ID, ErrNoHandshake)
	}
	_, err := h.request(ctx, m, func(r Message) bool { return r.Type == TypeDone && r.ID == m.ID })
	if err != nil {
		return fmt.Errorf("guestproto: %s %s: %w", what, m.ID, err)
	}
	return nil
}

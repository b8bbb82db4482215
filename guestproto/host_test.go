package guestproto

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// fakeGuest is the guest end of a net.Pipe, scripted by the test.
type fakeGuest struct {
	t    *testing.T
	conn net.Conn
	mu   sync.Mutex // the test's goroutines take turns reading
	fr   *FrameReader
}

func newPair(t *testing.T, opts ...HostOption) (*Host, *fakeGuest) {
	t.Helper()
	hc, gc := net.Pipe()
	h := NewHost(hc, testLogger(t), opts...)
	t.Cleanup(func() { h.Close(); gc.Close() })
	return h, &fakeGuest{t: t, conn: gc, fr: NewFrameReader(gc)}
}

// read returns the next frame that is not a heartbeat.
func (g *fakeGuest) read() Message {
	g.t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		g.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, err := g.fr.ReadFrame()
		if err != nil {
			g.t.Fatalf("guest read: %v", err)
		}
		if m.Type != TypePing && m.Type != TypePong {
			return m
		}
	}
}

func (g *fakeGuest) send(m Message) {
	g.t.Helper()
	g.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := WriteFrame(g.conn, m); err != nil {
		g.t.Fatalf("guest send %s: %v", m.Type, err)
	}
}

// handshake runs a handshake with the guest answering idle.
func handshake(t *testing.T, h *Host, g *fakeGuest) {
	t.Helper()
	go func() {
		if m := g.read(); m.Type != TypeHello || m.V != Version {
			t.Errorf("first frame %+v, want HELLO v%d", m, Version)
		}
		g.send(Message{V: Version, Type: TypeHelloAck, State: StateIdle})
	}()
	if _, err := h.Handshake(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("Handshake: %v", err)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitDone(t *testing.T, h *Host) {
	t.Helper()
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed")
	}
}

func TestHandshakeReportsPendingRound(t *testing.T) {
	h, g := newPair(t)
	go func() {
		g.read()
		g.send(Message{V: Version, Type: TypeHelloAck, State: StateReady, ID: "r7", Op: OpMigrate})
	}()
	ack, err := h.Handshake(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := HelloAck{Version: 1, State: StateReady, PendingID: "r7", PendingOp: OpMigrate}
	if ack != want {
		t.Errorf("HelloAck = %+v, want %+v", ack, want)
	}
}

func TestHandshakeVersionMismatch(t *testing.T) {
	h, g := newPair(t)
	go func() {
		g.read()
		g.send(Message{V: 2, Type: TypeHelloAck, State: "something-new"})
	}()
	ack, err := h.Handshake(ctxT(t, 5*time.Second))
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("Handshake = %v, want ErrVersion", err)
	}
	if ack.Version != 2 {
		t.Errorf("ack.Version = %d, want the guest's 2", ack.Version)
	}
	waitDone(t, h)
	if err := h.Prepare(ctxT(t, time.Second), Prepare{ID: "r", Op: OpCheckpoint, Deadline: time.Second}); err == nil {
		t.Error("Prepare after a failed handshake succeeded")
	}
}

func TestRequestsNeedHandshake(t *testing.T) {
	h, _ := newPair(t)
	ctx := ctxT(t, time.Second)
	if err := h.Prepare(ctx, Prepare{ID: "r", Op: OpCheckpoint, Deadline: time.Second}); !errors.Is(err, ErrNoHandshake) {
		t.Errorf("Prepare = %v, want ErrNoHandshake", err)
	}
	if err := h.Resume(ctx, "r", OutcomeRestored); !errors.Is(err, ErrNoHandshake) {
		t.Errorf("Resume = %v, want ErrNoHandshake", err)
	}
}

func TestPrepareReady(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	devs := []Device{{ID: "pt0", MAC: "52:54:00:00:00:01"}}
	go func() {
		m := g.read()
		if m.Type != TypePrepare || m.ID != "r1" || m.Op != OpCheckpoint || m.DeadlineMS != 2000 || len(m.Devices) != 1 || m.Devices[0] != devs[0] {
			t.Errorf("guest got %+v", m)
		}
		g.send(Message{V: Version, Type: TypeReady, ID: "r1"})
	}()
	if err := h.Prepare(ctxT(t, 5*time.Second), Prepare{ID: "r1", Op: OpCheckpoint, Deadline: 2 * time.Second, Devices: devs}); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
}

func TestPrepareRefused(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	go func() {
		g.read()
		g.send(Message{V: Version, Type: TypeRefused, ID: "r1", Reason: "application solver did not reach a safe point"})
	}()
	err := h.Prepare(ctxT(t, 5*time.Second), Prepare{ID: "r1", Op: OpCheckpoint, Deadline: 2 * time.Second})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Prepare = %v, want ErrRefused", err)
	}
	var re *RefusedError
	if !errors.As(err, &re) || re.Reason != "application solver did not reach a safe point" {
		t.Errorf("RefusedError = %+v", re)
	}
}

func TestPrepareGuestNeverAnswers(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	go func() { g.read() }() // reads PREPARE, never answers

	// The PREPARE deadline bounds the wait even with an unbounded ctx...
	start := time.Now()
	err := h.Prepare(context.Background(), Prepare{ID: "r1", Op: OpCheckpoint, Deadline: 300 * time.Millisecond})
	el := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Prepare = %v, want DeadlineExceeded", err)
	}
	if el < 300*time.Millisecond || el > 300*time.Millisecond+prepareGrace(300*time.Millisecond)+200*time.Millisecond {
		t.Errorf("Prepare returned after %v, want deadline 300ms + grace %v", el, prepareGrace(300*time.Millisecond))
	}

	// ...and a shorter ctx wins over a long PREPARE deadline.
	go func() { g.read() }()
	start = time.Now()
	err = h.Prepare(ctxT(t, 200*time.Millisecond), Prepare{ID: "r2", Op: OpCheckpoint, Deadline: time.Minute})
	if el := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || el > time.Second {
		t.Fatalf("Prepare with a 200ms ctx = %v after %v", err, el)
	}

	// A late READY for r1 is dropped, not a protocol violation.
	g.send(Message{V: Version, Type: TypeReady, ID: "r1"})
	go func() {
		if m := g.read(); m.Type != TypeAbort || m.ID != "r1" {
			t.Errorf("guest got %+v, want ABORT r1", m)
		}
		g.send(Message{V: Version, Type: TypeDone, ID: "r1"})
	}()
	if err := h.Abort(ctxT(t, 5*time.Second), "r1", "guest too slow"); err != nil {
		t.Fatalf("Abort after a late READY: %v", err)
	}
}

func TestResumeAndAbortWaitForDone(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	go func() {
		m := g.read()
		if m.Type != TypeResume || m.ID != "r1" || m.Outcome != OutcomeRestored {
			t.Errorf("guest got %+v", m)
		}
		// A heartbeat in between does not disturb the wait for DONE.
		g.send(Message{V: Version, Type: TypePing, Seq: 9})
		g.send(Message{V: Version, Type: TypeDone, ID: "r1"})
	}()
	if err := h.Resume(ctxT(t, 5*time.Second), "r1", OutcomeRestored); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	go func() {
		if m := g.read(); m.Type != TypeAbort || m.Reason != "operator" {
			t.Errorf("guest got %+v", m)
		}
		g.send(Message{V: Version, Type: TypeDone, ID: "r2"})
	}()
	if err := h.Abort(ctxT(t, 5*time.Second), "r2", "operator"); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := h.Resume(ctxT(t, time.Second), "r3", "whatever"); !errors.Is(err, ErrMalformed) {
		t.Errorf("Resume with an invalid outcome = %v, want ErrMalformed", err)
	}
}

func TestResumeTimesOut(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	go func() { g.read() }()
	start := time.Now()
	err := h.Resume(ctxT(t, 200*time.Millisecond), "r1", OutcomeCheckpointed)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("Resume = %v after %v", err, time.Since(start))
	}
}

func TestHeartbeats(t *testing.T) {
	h, g := newPair(t, WithPingInterval(20*time.Millisecond))
	handshake(t, h, g)
	g.send(Message{V: Version, Type: TypePing, Seq: 77})
	sawPing, sawPong := false, false
	g.mu.Lock()
	defer g.mu.Unlock()
	for !(sawPing && sawPong) {
		g.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		m, err := g.fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for heartbeats: %v (ping %v, pong %v)", err, sawPing, sawPong)
		}
		switch {
		case m.Type == TypePing:
			sawPing = true
		case m.Type == TypePong && m.Seq == 77:
			sawPong = true
		}
	}
	if h.LastSeen().IsZero() {
		t.Error("LastSeen is zero after guest frames")
	}
}

func TestGuestProtocolViolationsCloseChannel(t *testing.T) {
	cases := []struct {
		name string
		raw  []byte
		want error
	}{
		{"guest sends PREPARE", frameOf(`{"v":1,"type":"PREPARE","id":"r","op":"checkpoint","deadline_ms":5}`), ErrUnexpected},
		{"DONE for a round never asked", frameOf(`{"v":1,"type":"DONE","id":"nope"}`), ErrUnexpected},
		{"garbage", []byte("\x00\x00\x00\x05hello"), ErrMalformed},
		{"oversized", header(0x7FFFFFFF), ErrFrameTooLarge},
		{"zero length", header(0), ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, g := newPair(t)
			handshake(t, h, g)
			errc := make(chan error, 1)
			go func() {
				errc <- h.Prepare(context.Background(), Prepare{ID: "r1", Op: OpCheckpoint, Deadline: time.Minute})
			}()
			g.read() // the PREPARE
			g.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := g.conn.Write(c.raw); err != nil {
				t.Fatal(err)
			}
			waitDone(t, h)
			if !errors.Is(h.Err(), c.want) {
				t.Errorf("Err() = %v, want %v", h.Err(), c.want)
			}
			select {
			case err := <-errc:
				if !errors.Is(err, ErrClosed) {
					t.Errorf("Prepare = %v, want ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Prepare did not return after the channel died")
			}
		})
	}
}

// A guest that floods frames (valid PINGs it never reads the answers to,
// or junk) gets its channel closed; the host neither blocks Prepare nor
// allocates in proportion to the flood.
func TestGuestFlood(t *testing.T) {
	for _, kind := range []string{"pings", "late replies", "junk"} {
		t.Run(kind, func(t *testing.T) {
			h, g := newPair(t, WithWriteTimeout(200*time.Millisecond))
			handshake(t, h, g)
			var frame []byte
			switch kind {
			case "pings":
				frame, _ = Encode(Message{Type: TypePing, Seq: 1})
			case "late replies":
				// DONE for the round being prepared: a known id, so each
				// one alone would only be dropped as late.
				frame, _ = Encode(Message{Type: TypeDone, ID: "r1"})
			case "junk":
				frame = header(MaxFrame) // then endless zero bytes: never a valid body
			}
			errc := make(chan error, 1)
			go func() {
				errc <- h.Prepare(context.Background(), Prepare{ID: "r1", Op: OpCheckpoint, Deadline: 10 * time.Second})
			}()
			g.read() // the PREPARE; from now on the guest never reads

			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			flooded := make(chan int)
			go func() {
				n := 0
				zeros := make([]byte, 32<<10)
				g.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				for {
					b := frame
					if kind == "junk" && n > 0 {
						b = zeros
					}
					if _, err := g.conn.Write(b); err != nil {
						break
					}
					n++
				}
				flooded <- n
			}()
			start := time.Now()
			select {
			case err := <-errc:
				if !errors.Is(err, ErrClosed) {
					t.Errorf("Prepare = %v, want ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Prepare blocked by the flood")
			}
			n := <-flooded
			runtime.ReadMemStats(&after)
			t.Logf("channel closed after %v, %d writes; %v", time.Since(start), n, h.Err())
			if kind != "junk" && !errors.Is(h.Err(), ErrFlood) {
				t.Errorf("Err() = %v, want ErrFlood", h.Err())
			}
			if kind == "junk" && !errors.Is(h.Err(), ErrMalformed) {
				t.Errorf("Err() = %v, want ErrMalformed", h.Err())
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 8<<20 {
				t.Errorf("flood made the process allocate %d bytes", d)
			}
		})
	}
}

func TestGuestEOF(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	g.conn.Close()
	waitDone(t, h)
	if !errors.Is(h.Err(), io.EOF) {
		t.Errorf("Err() = %v, want io.EOF", h.Err())
	}
}

func TestCloseUnblocksRequest(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	go func() { g.read() }()
	errc := make(chan error, 1)
	go func() {
		errc <- h.Prepare(context.Background(), Prepare{ID: "r1", Op: OpCheckpoint, Deadline: time.Minute})
	}()
	time.Sleep(50 * time.Millisecond)
	h.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Prepare = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Prepare did not return after Close")
	}
}

// Requests are served one at a time: a second Prepare waits for the first.
func TestRequestsAreSerialised(t *testing.T) {
	h, g := newPair(t)
	handshake(t, h, g)
	go func() {
		for range 2 {
			m := g.read()
			time.Sleep(20 * time.Millisecond)
			g.send(Message{V: Version, Type: TypeReady, ID: m.ID})
		}
	}()
	errc := make(chan error, 2)
	for _, id := range []string{"a", "b"} {
		go func() {
			errc <- h.Prepare(ctxT(t, 5*time.Second), Prepare{ID: id, Op: OpCheckpoint, Deadline: 2 * time.Second})
		}()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// Frames before HELLO_ACK are a previous connection's leftovers: dropped.
func TestFramesBeforeHandshakeDropped(t *testing.T) {
	h, g := newPair(t)
	go func() {
		g.read()
		g.send(Message{V: Version, Type: TypeReady, ID: "old-round"})
		g.send(Message{V: Version, Type: TypeDone, ID: "old-round"})
		g.send(Message{V: Version, Type: TypeHelloAck, State: StateIdle})
	}()
	if _, err := h.Handshake(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("Handshake after stale frames: %v", err)
	}
	select {
	case <-h.Done():
		t.Fatalf("channel closed: %v", h.Err())
	default:
	}
}

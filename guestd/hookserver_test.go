package guestd

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestd/hookclient"
)

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// shortDir is a temporary directory with a path short enough for sun_path.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "sv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func newHookServer(t *testing.T) (*HookServer, string) {
	t.Helper()
	path := filepath.Join(shortDir(t), "run", "hook.sock")
	s, err := NewHookServer(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// rawClient speaks the line protocol by hand, to test exact bytes.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, path string) *rawClient {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawClient) send(line string) {
	r.t.Helper()
	r.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.c.Write([]byte(line + "\n")); err != nil {
		r.t.Fatalf("send %q: %v", line, err)
	}
}

func (r *rawClient) recv() (string, error) {
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	s, err := r.br.ReadString('\n')
	return strings.TrimSuffix(s, "\n"), err
}

func (r *rawClient) expect(cmd, want string) {
	r.t.Helper()
	if cmd != "" {
		r.send(cmd)
	}
	got, err := r.recv()
	if err != nil || got != want {
		r.t.Fatalf("%q: got %q (%v), want %q", cmd, got, err, want)
	}
}

// expectClosed reads until EOF, allowing one "ERR ..." line first.
func (r *rawClient) expectClosed() {
	r.t.Helper()
	for i := 0; ; i++ {
		line, err := r.recv()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r.t.Fatal("server did not close the connection")
			}
			return
		}
		if i > 0 || !strings.HasPrefix(line, "ERR ") {
			r.t.Fatalf("got %q, want ERR and a closed connection", line)
		}
	}
}

// syncedConns counts connections, registered or not, that SYNCed in the
// current round.
func syncedConns(s *HookServer) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.synced {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestHookSocketModeAndStaleSocket(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "sub", "hook.sock")
	s, err := NewHookServer(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	// A second server must not steal a live socket.
	if _, err := NewHookServer(path, testLogger(t)); !errors.Is(err, ErrSocketInUse) {
		t.Errorf("second server: %v, want ErrSocketInUse", err)
	}
	s.Close()

	// A stale socket (nobody listening) is replaced.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	s2, err := NewHookServer(path, testLogger(t))
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	dialRaw(t, path).expect("POLL", "IDLE")
	s2.Close()

	// A regular file is not ours to delete.
	os.WriteFile(path, []byte("x"), 0o644)
	if _, err := NewHookServer(path, testLogger(t)); err == nil {
		t.Error("server replaced a regular file")
	}
}

func TestHookProtocolLines(t *testing.T) {
	s, path := newHookServer(t)
	a := dialRaw(t, path)
	a.expect("HELLO solver 4242", "OK 1")
	b := dialRaw(t, path) // unregistered
	b.expect("POLL", "IDLE")
	b.expect("STATUS", "STATUS idle")
	b.expect("SYNC", "OUTCOME none - -")
	waitFor(t, "registration", func() bool { return s.Registered() == 1 })

	s.Begin("checkpoint", "r1")
	a.expect("POLL", "PENDING checkpoint r1")
	b.expect("STATUS", "STATUS pending checkpoint r1 synced=0/1")
	b.expect("WAIT", "PENDING checkpoint r1")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	synced := make(chan error, 1)
	go func() { synced <- s.WaitSynced(ctx) }()
	a.send("SYNC")
	if err := <-synced; err != nil {
		t.Fatalf("WaitSynced: %v", err)
	}
	b.expect("STATUS", "STATUS pending checkpoint r1 synced=1/1")
	// An unregistered SYNC joins the round too (but is not waited for).
	b.send("SYNC")
	waitFor(t, "the unregistered SYNC", func() bool { return syncedConns(s) == 2 })
	s.Finish("r1", "checkpointed")
	a.expect("", "OUTCOME checkpointed checkpoint r1")
	b.expect("", "OUTCOME checkpointed checkpoint r1")
	a.expect("POLL", "IDLE")
	a.expect("SYNC", "OUTCOME none - -")
}

func TestHookWaitBlocksUntilBegin(t *testing.T) {
	s, path := newHookServer(t)
	c := dialRaw(t, path)
	c.send("WAIT")
	time.Sleep(50 * time.Millisecond)
	s.Begin("migrate", "m1")
	c.expect("", "PENDING migrate m1")
}

func TestHookLaggardGetsAborted(t *testing.T) {
	s, path := newHookServer(t)
	fast := dialRaw(t, path)
	fast.expect("HELLO fast 1", "OK 1")
	slow := dialRaw(t, path)
	slow.expect("HELLO slow 2", "OK 1")
	waitFor(t, "registrations", func() bool { return s.Registered() == 2 })

	s.Begin("checkpoint", "r3")
	fast.send("SYNC")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := s.WaitSynced(ctx)
	var ns *NotSyncedError
	if !errors.As(err, &ns) || !errors.Is(err, ErrNotSynced) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSynced = %v, want a NotSyncedError matching DeadlineExceeded", err)
	}
	if len(ns.Apps) != 1 || ns.Apps[0] != "slow (pid 2)" {
		t.Errorf("laggards %q, want [slow (pid 2)]", ns.Apps)
	}
	if want := "application slow (pid 2) did not reach a safe point"; ns.Reason() != want {
		t.Errorf("Reason() = %q, want %q", ns.Reason(), want)
	}
	s.Finish("r3", "aborted")
	fast.expect("", "OUTCOME aborted checkpoint r3")
	// The laggard learns about the round it missed, once.
	slow.expect("POLL", "PENDING checkpoint r3")
	slow.expect("SYNC", "OUTCOME aborted checkpoint r3")
	slow.expect("POLL", "IDLE")
	slow.expect("SYNC", "OUTCOME none - -")
	// The fast one did not miss anything.
	fast.expect("SYNC", "OUTCOME none - -")
}

func TestHookDisconnectUnregisters(t *testing.T) {
	s, path := newHookServer(t)
	a := dialRaw(t, path)
	a.expect("HELLO a 1", "OK 1")
	waitFor(t, "registration", func() bool { return s.Registered() == 1 })
	s.Begin("checkpoint", "r1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- s.WaitSynced(ctx) }()
	time.Sleep(20 * time.Millisecond)
	a.c.Close() // the app dies: the round no longer waits for it
	if err := <-res; err != nil {
		t.Fatalf("WaitSynced after the only app left: %v", err)
	}
	if s.Registered() != 0 {
		t.Errorf("Registered() = %d after disconnect", s.Registered())
	}
	// A client hanging up in SYNC is unregistered too.
	b := dialRaw(t, path)
	b.expect("HELLO b 2", "OK 1")
	b.send("SYNC")
	waitFor(t, "b registered", func() bool { return s.Registered() == 1 })
	b.c.Close()
	waitFor(t, "b unregistered", func() bool { return s.Registered() == 0 })
}

func TestHookProtocolErrorsClose(t *testing.T) {
	s, path := newHookServer(t)
	for _, line := range []string{
		"FROB",
		"HELLO",
		"HELLO name",
		"HELLO name notapid",
		"HELLO name -3",
		"HELLO " + strings.Repeat("n", 65) + " 1",
		"POLL extra",
		"\x00\x01\x02",
		strings.Repeat("x", MaxHookLine+1),
	} {
		c := dialRaw(t, path)
		c.send(line)
		c.expectClosed()
	}
	// A line of exactly MaxHookLine bytes is read (and refused as unknown),
	// not cut.
	c := dialRaw(t, path)
	c.send("HELLO " + strings.Repeat("n", MaxHookLine-len("HELLO  1")) + " 1")
	c.expectClosed()

	// A command while SYNC blocks is a protocol error.
	s.Begin("checkpoint", "r1")
	d := dialRaw(t, path)
	d.send("SYNC")
	d.send("POLL")
	d.expectClosed()
	if s.Registered() != 0 {
		t.Errorf("Registered() = %d", s.Registered())
	}
}

func TestWaitSyncedErrors(t *testing.T) {
	s, path := newHookServer(t)
	if err := s.WaitSynced(context.Background()); !errors.Is(err, ErrNoRound) {
		t.Errorf("WaitSynced without a round: %v", err)
	}
	dialRaw(t, path).expect("HELLO x 1", "OK 1")
	s.Begin("checkpoint", "r1")
	res := make(chan error, 1)
	go func() { res <- s.WaitSynced(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	s.Finish("r1", "aborted")
	if err := <-res; !errors.Is(err, ErrRoundEnded) {
		t.Errorf("WaitSynced across Finish: %v, want ErrRoundEnded", err)
	}
}

// The Go client against the real server.
func TestHookClient(t *testing.T) {
	s, path := newHookServer(t)
	c, err := hookclient.Open(path, "goapp")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok, err := c.Poll(); err != nil || ok {
		t.Fatalf("Poll = %v, %v", ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		time.Sleep(20 * time.Millisecond)
		s.Begin("restore", "x9")
	}()
	p, err := c.Wait(ctx)
	if err != nil || p != (hookclient.Pending{Op: "restore", ID: "x9"}) {
		t.Fatalf("Wait = %+v, %v", p, err)
	}
	st, err := c.Status()
	if err != nil || st != (hookclient.Status{Pending: true, Op: "restore", ID: "x9", Synced: 0, Registered: 1}) {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	go func() {
		if err := s.WaitSynced(ctx); err == nil {
			s.Finish("x9", "restored")
		}
	}()
	o, err := c.Sync(ctx)
	if err != nil || o != (hookclient.Outcome{Outcome: "restored", Op: "restore", ID: "x9"}) {
		t.Fatalf("Sync = %+v, %v", o, err)
	}

	// A cancelled Wait returns ctx's error and breaks the client.
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := c.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with expired ctx = %v", err)
	}
	if _, _, err := c.Poll(); !errors.Is(err, hookclient.ErrClosed) {
		t.Errorf("Poll after a cancelled Wait = %v, want ErrClosed", err)
	}
	waitFor(t, "unregistration", func() bool { return s.Registered() == 0 })
}

package guestd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestd/hookclient"
	"github.com/symvirt/symvirt/guestproto"
)

// testEnv is a guestd (Run) on a unix channel, with its hook socket, hook
// dir and a fake sysfs in a temporary directory.
type testEnv struct {
	t        *testing.T
	dir      string
	chanPath string
	hookSock string
	hookDir  string
	sys      *fakeSys
	metrics  string // host:port, if enabled
	stop     func() // stops guestd (Run returns) and waits for it; Cleanup does it too
}

func startGuestd(t *testing.T, mutate func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dir: shortDir(t)}
	e.chanPath = filepath.Join(e.dir, "ch.sock")
	e.hookSock = filepath.Join(e.dir, "hook.sock")
	e.hookDir = filepath.Join(e.dir, "hooks.d")
	e.sys = newFakeSys(t)
	cfg := Config{
		Channel:           "unix:" + e.chanPath,
		HookSocket:        e.hookSock,
		HookDir:           e.hookDir,
		SysRoot:           e.sys.root,
		NICWait:           time.Second,
		ResumeHookTimeout: 5 * time.Second,
		Heartbeat:         100 * time.Millisecond,
		Logger:            testLogger(t),
		sysWrite:          e.sys.write,
		// Never the machine's own: tests run next to each other.
		FreezeState: filepath.Join(e.dir, "freeze.json"),
		TaintSocket: filepath.Join(e.dir, "taint.sock"),
		// Nor the machine's clock.
		setClock: func(time.Time) error { return errors.New("tests do not step the clock") },
	}
	if mutate != nil {
		mutate(&cfg)
	}
	e.metrics = cfg.MetricsListen
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(e.stop)
	waitFor(t, "guestd to listen", func() bool {
		c, err := net.Dial("unix", e.chanPath)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return e
}

// host connects a guestproto.Host (as hostd would) and shakes hands.
func (e *testEnv) host() (*guestproto.Host, guestproto.HelloAck) {
	e.t.Helper()
	c, err := net.Dial("unix", e.chanPath)
	if err != nil {
		e.t.Fatal(err)
	}
	h := guestproto.NewHost(c, testLogger(e.t).With("side", "host"), guestproto.WithPingInterval(100*time.Millisecond))
	e.t.Cleanup(func() { h.Close() })
	ack, err := h.Handshake(ctxFor(e.t, 10*time.Second))
	if err != nil {
		e.t.Fatalf("Handshake: %v", err)
	}
	return h, ack
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *testEnv) app(name string) *hookclient.Client {
	e.t.Helper()
	c, err := hookclient.Open(e.hookSock, name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// script writes an executable hook script.
func (e *testEnv) script(name, body string) {
	e.t.Helper()
	os.MkdirAll(e.hookDir, 0o755)
	if err := os.WriteFile(filepath.Join(e.hookDir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

// cooperate runs an application that polls like the C demo: at each poll
// that shows an operation, it syncs and reports the outcome.
func cooperate(t *testing.T, c *hookclient.Client) <-chan hookclient.Outcome {
	out := make(chan hookclient.Outcome, 1)
	go func() {
		defer close(out)
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(10 * time.Millisecond) {
			_, ok, err := c.Poll()
			if err != nil {
				t.Errorf("Poll: %v", err)
				return
			}
			if !ok {
				continue
			}
			o, err := c.Sync(context.Background())
			if err != nil {
				t.Errorf("Sync: %v", err)
				return
			}
			out <- o
			return
		}
		t.Error("no operation seen within 10s")
	}()
	return out
}

func recvOutcome(t *testing.T, ch <-chan hookclient.Outcome) hookclient.Outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome within 10s")
	}
	return hookclient.Outcome{}
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestFullRoundCheckpointed(t *testing.T) {
	e := startGuestd(t, func(c *Config) { c.MetricsListen = freePort(t) })
	e.script("10-log", `echo "$@ $SYMVIRT_ID" >>`+filepath.Join(e.dir, "hooks.log"))
	h, ack := e.host()
	if ack.State != guestproto.StateIdle || ack.PendingID != "" {
		t.Fatalf("HelloAck %+v, want idle", ack)
	}
	a1, a2 := e.app("solver"), e.app("db")
	o1, o2 := cooperate(t, a1), cooperate(t, a2)

	start := time.Now()
	if err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r1", Op: guestproto.OpCheckpoint, Deadline: 5 * time.Second}); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	t.Logf("READY after %v", time.Since(start))
	st, err := hookclient.Open(e.hookSock, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if s, err := st.Status(); err != nil || !s.Pending || s.Synced != 2 || s.Registered != 2 {
		t.Errorf("Status while READY = %+v, %v", s, err)
	}
	if err := h.Resume(ctxFor(t, 10*time.Second), "r1", guestproto.OutcomeCheckpointed); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	want := hookclient.Outcome{Outcome: "checkpointed", Op: "checkpoint", ID: "r1"}
	if o := recvOutcome(t, o1); o != want {
		t.Errorf("solver got %+v", o)
	}
	if o := recvOutcome(t, o2); o != want {
		t.Errorf("db got %+v", o)
	}
	log, _ := os.ReadFile(filepath.Join(e.dir, "hooks.log"))
	if string(log) != "prepare checkpoint r1\nresume checkpoint checkpointed r1\n" {
		t.Errorf("hook log:\n%s", log)
	}
	// A duplicate RESUME is answered DONE, and the guest is idle again.
	if err := h.Resume(ctxFor(t, 5*time.Second), "r1", guestproto.OutcomeCheckpointed); err != nil {
		t.Errorf("duplicate Resume: %v", err)
	}
	if ack, err := h.Handshake(ctxFor(t, 5*time.Second)); err != nil || ack.State != guestproto.StateIdle {
		t.Errorf("state after the round: %+v, %v", ack, err)
	}

	metrics := scrape(t, e.metrics)
	for _, want := range []string{
		`symvirt_guestd_rounds_total{op="checkpoint",outcome="checkpointed"} 1`,
		`symvirt_guestd_registered_apps 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, metrics)
		}
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestAppThatNeverSyncsRefusesRound(t *testing.T) {
	e := startGuestd(t, nil)
	h, _ := e.host()
	lazy := e.app("lazy")
	goodC := e.app("good")
	good := cooperate(t, goodC)

	start := time.Now()
	err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r2", Op: guestproto.OpMigrate, Deadline: time.Second})
	el := time.Since(start)
	var re *guestproto.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("Prepare = %v, want REFUSED", err)
	}
	wantReason := fmt.Sprintf("application lazy (pid %d) did not reach a safe point", os.Getpid())
	if re.Reason != wantReason {
		t.Errorf("reason %q, want %q", re.Reason, wantReason)
	}
	if el > time.Second {
		t.Errorf("REFUSED after %v, past the 1s deadline", el)
	}
	// The app that did sync learns the round was aborted...
	if o := recvOutcome(t, good); o.Outcome != "aborted" || o.ID != "r2" {
		t.Errorf("good got %+v", o)
	}
	goodC.Close() // gone: the next round must not wait for it
	// ...and so does the late one, at once, on its next SYNC.
	if p, ok, err := lazy.Poll(); err != nil || !ok || p.ID != "r2" {
		t.Errorf("lazy Poll = %+v %v %v, want the missed round", p, ok, err)
	}
	o, err := lazy.Sync(ctxFor(t, time.Second))
	if err != nil || o != (hookclient.Outcome{Outcome: "aborted", Op: "migrate", ID: "r2"}) {
		t.Errorf("late Sync = %+v, %v", o, err)
	}
	// The guest is idle again: the next round goes through once lazy syncs.
	lazyOut := cooperate(t, lazy)
	if err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r3", Op: guestproto.OpMigrate, Deadline: 5 * time.Second}); err != nil {
		t.Fatalf("next Prepare: %v", err)
	}
	if err := h.Abort(ctxFor(t, 10*time.Second), "r3", "test"); err != nil {
		t.Fatal(err)
	}
	if o := recvOutcome(t, lazyOut); o.Outcome != "aborted" || o.ID != "r3" {
		t.Errorf("lazy got %+v", o)
	}
}

func TestFailingHookRefusesRound(t *testing.T) {
	e := startGuestd(t, nil)
	logf := filepath.Join(e.dir, "hooks.log")
	e.script("10-ok", `echo "10-ok $@" >>`+logf)
	e.script("20-fail", `echo "20-fail $@" >>`+logf+`; echo "cannot quiesce" >&2; exit 3`)
	e.script("30-later", `echo "30-later $@" >>`+logf)
	e.script("40-disabled~", `exit 9`)
	h, _ := e.host()
	err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r1", Op: guestproto.OpCheckpoint, Deadline: 5 * time.Second})
	var re *guestproto.RefusedError
	if !errors.As(err, &re) || re.Reason != "hook 20-fail exited with status 3" {
		t.Fatalf("Prepare = %v, want REFUSED naming 20-fail and its status", err)
	}
	want := "10-ok prepare checkpoint\n20-fail prepare checkpoint\n10-ok resume checkpoint aborted\n"
	waitFor(t, "the abort to reach the hooks", func() bool {
		b, _ := os.ReadFile(logf)
		return len(b) >= len(want)
	})
	if b, _ := os.ReadFile(logf); string(b) != want {
		t.Errorf("hook log:\n%s\nwant:\n%s", b, want)
	}
}

func TestSlowHookRefusedAtDeadline(t *testing.T) {
	e := startGuestd(t, nil)
	e.script("10-slow", `sleep 30`)
	h, _ := e.host()
	start := time.Now()
	err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r1", Op: guestproto.OpCheckpoint, Deadline: time.Second})
	var re *guestproto.RefusedError
	if !errors.As(err, &re) || re.Reason != "hook 10-slow did not finish before the deadline" {
		t.Fatalf("Prepare = %v", err)
	}
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Errorf("REFUSED after %v", el)
	}
}

// The host goes away after READY (the VM is checkpointed); a new host
// connection (the restored VM's) finds the round pending and resumes it.
func TestRoundSurvivesHostReconnect(t *testing.T) {
	e := startGuestd(t, nil)
	logf := filepath.Join(e.dir, "hooks.log")
	e.script("10-log", `echo "$@" >>`+logf)
	app := cooperate(t, e.app("solver"))
	h1, _ := e.host()
	if err := h1.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "ck1", Op: guestproto.OpCheckpoint, Deadline: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	h1.Close()

	h2, ack := e.host()
	if ack.State != guestproto.StateReady || ack.PendingID != "ck1" || ack.PendingOp != guestproto.OpCheckpoint {
		t.Fatalf("HelloAck after reconnect = %+v, want ready ck1 checkpoint", ack)
	}
	select {
	case o := <-app:
		t.Fatalf("app got %+v before RESUME", o)
	default:
	}
	// A new PREPARE while the round is pending is refused.
	err := h2.Prepare(ctxFor(t, 5*time.Second), guestproto.Prepare{ID: "other", Op: guestproto.OpMigrate, Deadline: time.Second})
	if !errors.Is(err, guestproto.ErrRefused) {
		t.Errorf("PREPARE while another round is pending = %v, want ErrRefused", err)
	}
	if err := h2.Resume(ctxFor(t, 10*time.Second), "ck1", guestproto.OutcomeRestored); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if o := recvOutcome(t, app); o != (hookclient.Outcome{Outcome: "restored", Op: "checkpoint", ID: "ck1"}) {
		t.Errorf("app got %+v", o)
	}
	if b, _ := os.ReadFile(logf); string(b) != "prepare checkpoint\nresume checkpoint restored\n" {
		t.Errorf("hook log:\n%s", b)
	}
}

// The host gives up on a PREPARE (its ctx ends) and ABORTs it while the
// guest is still waiting for an application.
func TestAbortWhilePreparing(t *testing.T) {
	e := startGuestd(t, nil)
	h, _ := e.host()
	lazy := e.app("lazy")
	err := h.Prepare(ctxFor(t, 300*time.Millisecond), guestproto.Prepare{ID: "r1", Op: guestproto.OpCheckpoint, Deadline: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Prepare = %v, want the host's deadline", err)
	}
	start := time.Now()
	if err := h.Abort(ctxFor(t, 5*time.Second), "r1", "host deadline"); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("DONE after %v", el)
	}
	o, err := lazy.Sync(ctxFor(t, time.Second))
	if err != nil || o.Outcome != "aborted" || o.ID != "r1" {
		t.Errorf("late Sync = %+v, %v", o, err)
	}
	if ack, err := h.Handshake(ctxFor(t, 5*time.Second)); err != nil || ack.State != guestproto.StateIdle {
		t.Errorf("after ABORT: %+v, %v", ack, err)
	}
}

// A host connection dying mid-PREPARE cancels it: the next host finds the
// guest idle, and the applications learn the round was aborted.
func TestHostDiesWhilePreparing(t *testing.T) {
	e := startGuestd(t, nil)
	lazy := e.app("lazy")
	h1, _ := e.host()
	go h1.Prepare(context.Background(), guestproto.Prepare{ID: "r1", Op: guestproto.OpCheckpoint, Deadline: time.Minute})
	waitFor(t, "the round to be pending", func() bool { _, ok, _ := lazy.Poll(); return ok })
	h1.Close()
	_, ack := e.host()
	if ack.State != guestproto.StateIdle || ack.PendingID != "" {
		t.Errorf("HelloAck = %+v, want idle", ack)
	}
	o, err := lazy.Sync(ctxFor(t, time.Second))
	if err != nil || o.Outcome != "aborted" {
		t.Errorf("Sync = %+v, %v", o, err)
	}
}

func TestPrepareHandsOffBondedNIC(t *testing.T) {
	e := startGuestd(t, func(c *Config) { c.NICWait = 3 * time.Second })
	f := e.sys
	f.addNIC("eth0", 2, macVirtio)
	f.addNIC("eth1", 3, macPT)
	f.addBond("bond0", 4, []string{"eth0", "eth1"}, "eth1")
	h, _ := e.host()
	err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "m1", Op: guestproto.OpMigrate, Deadline: 5 * time.Second,
		Devices: []guestproto.Device{{ID: "pt0", MAC: macPT}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.get("bond0", "bonding", "active_slave"); got != "eth0" {
		t.Fatalf("active slave after READY: %q, want eth0", got)
	}
	// Migrated: the passthrough NIC is gone, the destination's is new.
	f.unplug("eth1")
	f.addNIC("eth2", 9, macNewPT)
	h.Close()
	h2, ack := e.host()
	if ack.PendingID != "m1" {
		t.Fatalf("HelloAck %+v", ack)
	}
	if err := h2.Resume(ctxFor(t, 10*time.Second), "m1", guestproto.OutcomeMigrated); err != nil {
		t.Fatal(err)
	}
	if a, p := f.get("bond0", "bonding", "active_slave"), f.get("bond0", "bonding", "primary"); a != "eth2" || p != "eth2" {
		t.Errorf("after RESUME: active %q primary %q, want eth2", a, p)
	}
}

// On a socket channel, a host sending garbage loses its connection; the
// next connection works.
func TestGarbageFromHostClosesConnection(t *testing.T) {
	e := startGuestd(t, nil)
	c, err := net.Dial("unix", e.chanPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("\xff\xff\xff\xffgarbage"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("guest did not close the connection: %v", err)
	}
	e.host()
}

// pipedAgent is an agent without heartbeats and the two ends of a pipe:
// the guest's (to serve a stream on) and the host's (closed at the end).
func pipedAgent(t *testing.T) (a *agent, guest, host net.Conn) {
	hooks, _ := newHookServer(t)
	cfg := Config{Logger: testLogger(t), Heartbeat: -1}
	cfg.setDefaults()
	guest, host = net.Pipe()
	t.Cleanup(func() { host.Close() })
	return newAgent(cfg, hooks), guest, host
}

// On virtio-serial the stream cannot be closed: garbage (a host that died
// mid-frame, then a new host) is skipped up to the next HELLO.
func TestVirtioStreamResyncsOnHello(t *testing.T) {
	a, gc, hc := pipedAgent(t)
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- a.serveStream(ctx, gc, func() { gc.Close() }, true) }()

	hc.SetDeadline(time.Now().Add(5 * time.Second))
	prep, _ := guestproto.Encode(guestproto.Message{Type: guestproto.TypePrepare, ID: "stale", Op: guestproto.OpCheckpoint, DeadlineMS: 1000})
	hello, _ := guestproto.Encode(guestproto.Message{Type: guestproto.TypeHello})
	go func() {
		hc.Write(prep)                     // before any HELLO: ignored
		hc.Write([]byte{0, 0, 0, 9, '{'})  // a frame cut short...
		hc.Write([]byte("\x00junk{}\x00")) // ...then noise
		hc.Write(hello)
	}()
	m, err := guestproto.ReadFrame(bufio.NewReader(hc))
	if err != nil || m.Type != guestproto.TypeHelloAck || m.State != guestproto.StateIdle {
		t.Fatalf("got %+v, %v; want HELLO_ACK idle", m, err)
	}
	hc.Close()
	// EOF on virtio-serial is "no host now": the stream is served on (a
	// stale disconnect notice must not end the next host's session).
	select {
	case err := <-done:
		t.Fatalf("serveStream returned at EOF: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("serveStream did not return when its context ended")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.round.phase != phaseIdle {
		t.Errorf("the PREPARE sent before HELLO started a round")
	}
}

func TestFindVirtioPort(t *testing.T) {
	root := t.TempDir()
	for port, name := range map[string]string{"vport1p1": "org.qemu.guest_agent.0", "vport2p1": "org.symvirt.0"} {
		os.MkdirAll(filepath.Join(root, "sys/class/virtio-ports", port), 0o755)
		os.WriteFile(filepath.Join(root, "sys/class/virtio-ports", port, "name"), []byte(name+"\n"), 0o644)
	}
	if _, err := findVirtioPort(root, "org.symvirt.0"); !errors.Is(err, ErrNoPort) {
		t.Errorf("without its /dev node: %v, want ErrNoPort", err)
	}
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	os.WriteFile(filepath.Join(root, "dev/vport2p1"), nil, 0o600)
	if p, err := findVirtioPort(root, "org.symvirt.0"); err != nil || p != filepath.Join(root, "dev/vport2p1") {
		t.Errorf("findVirtioPort = %q, %v", p, err)
	}
	os.MkdirAll(filepath.Join(root, "dev/virtio-ports"), 0o755)
	os.Symlink("../vport2p1", filepath.Join(root, "dev/virtio-ports/org.symvirt.0"))
	if p, err := findVirtioPort(root, "org.symvirt.0"); err != nil || p != filepath.Join(root, "dev/virtio-ports/org.symvirt.0") {
		t.Errorf("with the udev link: %q, %v", p, err)
	}
	if _, err := findVirtioPort(root, "org.other.0"); !errors.Is(err, ErrNoPort) {
		t.Errorf("unknown name: %v", err)
	}
}

// The host ABORTs a round the guest has just refused (its REFUSED and the
// ABORT cross): DONE comes once the guest's own undo is over.
func TestAbortDuringRefusalUndo(t *testing.T) {
	e := startGuestd(t, nil)
	e.script("10-slow-undo", `[ "$1" = resume ] && sleep 1; exit 0`)
	e.script("20-fail", `[ "$1" = prepare ] && exit 4; exit 0`)
	h, _ := e.host()
	err := h.Prepare(ctxFor(t, 10*time.Second), guestproto.Prepare{ID: "r1", Op: guestproto.OpCheckpoint, Deadline: 5 * time.Second})
	if !errors.Is(err, guestproto.ErrRefused) {
		t.Fatalf("Prepare = %v", err)
	}
	start := time.Now()
	if err := h.Abort(ctxFor(t, 5*time.Second), "r1", "crossed"); err != nil {
		t.Fatalf("Abort during the undo: %v", err)
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Errorf("DONE after %v, before the undo (1s hook) could be over", el)
	}
}

// A host flooding frames loses its connection; the guest stays usable.
func TestHostFloodClosesConnection(t *testing.T) {
	e := startGuestd(t, nil)
	c, err := net.Dial("unix", e.chanPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello, _ := guestproto.Encode(guestproto.Message{Type: guestproto.TypeHello})
	ping, _ := guestproto.Encode(guestproto.Message{Type: guestproto.TypePing, Seq: 1})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	n := 0
	for ; n < 100000; n++ {
		if _, err := c.Write(ping); err != nil {
			break
		}
	}
	if n == 100000 {
		t.Fatal("guest accepted 100000 PINGs without closing")
	}
	t.Logf("connection closed after %d PINGs", n)
	e.host()
}

// gatedPort stands in for a virtio-serial port: reads come from the
// host's end of a pipe, and each write waits for the test's verdict.
type gatedPort struct {
	r       io.Reader
	writes  chan []byte
	verdict chan error
}

func (p *gatedPort) Read(b []byte) (int, error) { return p.r.Read(b) }

func (p *gatedPort) Write(b []byte) (int, error) {
	p.writes <- append([]byte(nil), b...)
	if err := <-p.verdict; err != nil {
		return 0, err
	}
	return len(b), nil
}

// A write that fails for a session a HELLO has ended since (on
// virtio-serial: a frame queued while no host was there, timing out) ends
// that session only: the new host's session goes on, and its PREPARE is
// answered. Before, the failure ended whichever session was current, and
// the next PREPARE was dropped as a frame before HELLO.
func TestStaleWriteFailureKeepsTheNewSession(t *testing.T) {
	a, gc, hc := pipedAgent(t)
	port := &gatedPort{r: gc, writes: make(chan []byte), verdict: make(chan error)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.serveStream(ctx, port, func() { gc.Close() }, true)
	hc.SetDeadline(time.Now().Add(10 * time.Second))
	send := func(m guestproto.Message) {
		f, _ := guestproto.Encode(m)
		if _, err := hc.Write(f); err != nil {
			t.Fatalf("host writes %s: %v", m.Type, err)
		}
	}
	written := func(what string) guestproto.Message {
		select {
		case b := <-port.writes:
			m, err := guestproto.ReadFrame(bufio.NewReader(bytes.NewReader(b)))
			if err != nil {
				t.Fatalf("%s: guestd wrote %q: %v", what, b, err)
			}
			return m
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: guestd wrote nothing in 5 s", what)
		}
		return guestproto.Message{}
	}
	send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeHello})
	if m := written("first HELLO_ACK"); m.Type != guestproto.TypeHelloAck {
		t.Fatalf("first answer %+v, want HELLO_ACK", m)
	}
	// While that write hangs (no host), a new host says HELLO.
	send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypeHello})
	time.Sleep(200 * time.Millisecond) // the second HELLO handled
	port.verdict <- errors.New("write timeout (no host)")
	if m := written("second HELLO_ACK"); m.Type != guestproto.TypeHelloAck {
		t.Fatalf("second answer %+v, want HELLO_ACK", m)
	}
	port.verdict <- nil
	time.Sleep(200 * time.Millisecond) // the first write's failure handled
	send(guestproto.Message{V: guestproto.Version, Type: guestproto.TypePrepare, ID: "r1", Op: guestproto.OpCheckpoint, DeadlineMS: 2000})
	if m := written("answer to PREPARE"); m.Type != guestproto.TypeReady || m.ID != "r1" {
		t.Fatalf("answer to PREPARE %+v, want READY r1", m)
	}
	port.verdict <- nil
}

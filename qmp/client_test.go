package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

func TestHandshake(t *testing.T) {
	c := startFake(t, nil)
	if got := c.Version().String(); got != "7.2.22" {
		t.Errorf("Version = %q, want 7.2.22", got)
	}
	if v := c.Version(); v.Package != "Debian 1:7.2+dfsg-7" {
		t.Errorf("Version.Package = %q", v.Package)
	}
	if caps := c.Capabilities(); len(caps) != 1 || caps[0] != "oob" {
		t.Errorf("Capabilities = %v", caps)
	}
	if c.Err() != nil {
		t.Errorf("Err while connected = %v", c.Err())
	}
	select {
	case <-c.Done():
		t.Fatal("Done closed while connected")
	default:
	}
	if err := c.Connect(); err != nil {
		t.Errorf("Connect on live client: %v", err)
	}
}

func TestHandshakeCapabilitiesRejected(t *testing.T) {
	f, cli := newFakePair(t)
	go func() {
		f.greet()
		req := f.expect("qmp_capabilities")
		f.replyErr(req.ID, "GenericError", "nope")
	}()
	_, err := New(testCtx(t, 5*time.Second), cli)
	if !errors.Is(err, ErrGenericError) {
		t.Fatalf("New err = %v, want GenericError", err)
	}
}

func TestHandshakeNotAGreeting(t *testing.T) {
	f, cli := newFakePair(t)
	go f.sendRaw([]byte(`{"return": {}}`))
	_, err := New(testCtx(t, 5*time.Second), cli)
	if err == nil || !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "expected greeting") {
		t.Fatalf("New err = %v, want protocol error", err)
	}
}

func TestNewGreetingTimeout(t *testing.T) {
	_, cli := newFakePair(t) // the fake never speaks
	start := time.Now()
	_, err := New(testCtx(t, 150*time.Millisecond), cli)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("New took %v", d)
	}
}

func TestDialGreetingTimeout(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			accepted <- conn // hold it open, never send a greeting
		}
	}()
	start := time.Now()
	_, err = Dial(testCtx(t, 200*time.Millisecond), "unix", sock)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Dial took %v, want about 200ms", d)
	}
	select {
	case conn := <-accepted:
		// Our side must have been closed: the server sees EOF.
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("server read after Dial gave up: %v, want EOF", err)
		}
		conn.Close()
	case <-time.After(2 * time.Second):
		t.Error("listener never accepted")
	}
}

func TestDialRefused(t *testing.T) {
	_, err := Dial(testCtx(t, time.Second), "unix", filepath.Join(t.TempDir(), "nope.sock"))
	if err == nil || !strings.Contains(err.Error(), "dial") {
		t.Fatalf("err = %v", err)
	}
}

func TestExecuteSuccess(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		req := f.expect("query-status")
		if len(req.Arguments) != 0 {
			f.t.Errorf("query-status arguments = %s", req.Arguments)
		}
		f.reply(req.ID, map[string]any{"status": "paused", "running": false, "singlestep": false})

		req = f.expect("human-monitor-command")
		var args map[string]string
		json.Unmarshal(req.Arguments, &args)
		f.reply(req.ID, "echo:"+args["command-line"])

		req = f.expect("stop")
		f.reply(req.ID, struct{}{})
	})
	ctx := testCtx(t, 5*time.Second)
	st, err := c.Status(ctx)
	if err != nil || st.Status != "paused" || st.Running {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	var out string
	if err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info"}, &out); err != nil || out != "echo:info" {
		t.Fatalf("Execute = %q, %v", out, err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestExecuteErrorClasses(t *testing.T) {
	cases := []struct {
		class    string
		sentinel error
	}{
		{"GenericError", ErrGenericError},
		{"CommandNotFound", ErrCommandNotFound},
		{"DeviceNotFound", ErrDeviceNotFound},
		{"DeviceNotActive", ErrDeviceNotActive},
		{"KVMMissingCap", ErrKVMMissingCap},
		{"SomethingNew", nil},
	}
	c := startFake(t, func(f *fakeMon) {
		for _, tc := range cases {
			req := f.expect("cmd-" + tc.class)
			f.replyErr(req.ID, tc.class, "desc of "+tc.class)
		}
	})
	ctx := testCtx(t, 5*time.Second)
	all := []error{ErrGenericError, ErrCommandNotFound, ErrDeviceNotFound, ErrDeviceNotActive, ErrKVMMissingCap}
	for _, tc := range cases {
		cmd := "cmd-" + tc.class
		err := c.Execute(ctx, cmd, nil, nil)
		var qe *Error
		if !errors.As(err, &qe) {
			t.Fatalf("%s: err %v is not *Error", cmd, err)
		}
		if qe.Class != tc.class || qe.Desc != "desc of "+tc.class || qe.Cmd != cmd {
			t.Errorf("%s: Error = %+v", cmd, qe)
		}
		if !strings.Contains(err.Error(), cmd) {
			t.Errorf("%s: message %q does not name the command", cmd, err)
		}
		for _, s := range all {
			if got, want := errors.Is(err, s), s == tc.sentinel; got != want {
				t.Errorf("%s: errors.Is(err, %v) = %v, want %v", cmd, s, got, want)
			}
		}
		wrapped := errors.Join(errors.New("context"), err)
		if tc.sentinel != nil && !errors.Is(wrapped, tc.sentinel) {
			t.Errorf("%s: sentinel lost through wrapping", cmd)
		}
	}
}

func TestLargeReply(t *testing.T) {
	big := strings.Repeat("x", 200<<10) // 200 KiB, over bufio.Scanner's 64 KiB
	c := startFake(t, func(f *fakeMon) {
		req := f.expect("query-big")
		f.reply(req.ID, map[string]string{"blob": big})
		req = f.expect("query-small")
		f.reply(req.ID, 42)
	})
	ctx := testCtx(t, 5*time.Second)
	var res struct{ Blob string }
	if err := c.Execute(ctx, "query-big", nil, &res); err != nil {
		t.Fatal(err)
	}
	if res.Blob != big {
		t.Fatalf("blob length %d, want %d", len(res.Blob), len(big))
	}
	var n int
	if err := c.Execute(ctx, "query-small", nil, &n); err != nil || n != 42 {
		t.Fatalf("after big reply: %d, %v", n, err)
	}
}

func TestMessageTooLarge(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		req := f.expect("query-big")
		f.reply(req.ID, strings.Repeat("y", 4096))
	}, WithMaxMessageSize(1024))
	err := c.Execute(testCtx(t, 5*time.Second), "query-big", nil, nil)
	if !errors.Is(err, ErrDisconnected) {
		t.Fatalf("err = %v, want ErrDisconnected", err)
	}
	<-c.Done()
	if !errors.Is(c.Err(), ErrMessageTooLarge) {
		t.Fatalf("Err = %v, want ErrMessageTooLarge", c.Err())
	}
}

// Events are interleaved with replies and nobody reads the subscription:
// commands must still complete and surplus events are dropped and counted.
func TestEventsDoNotBlockReplies(t *testing.T) {
	const cmds, eventsPer = 20, 100
	c := startFake(t, func(f *fakeMon) {
		for i := 0; i < cmds; i++ {
			req := f.expect("query-status")
			for j := 0; j < eventsPer; j++ {
				f.event("MIGRATION_PASS", map[string]any{"pass": i*eventsPer + j})
			}
			f.reply(req.ID, map[string]any{"status": "running", "running": true})
			f.event("RESUME", nil)
		}
	}, WithEventBuffer(8))
	ignored, cancel := c.Subscribe() // never read
	defer cancel()
	passes, cancelPasses := c.Subscribe("MIGRATION_PASS") // never read either
	defer cancelPasses()

	done := make(chan error, 1)
	go func() {
		ctx := testCtx(t, 10*time.Second)
		for i := 0; i < cmds; i++ {
			if _, err := c.Status(ctx); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("commands blocked by unread events")
	}
	if len(ignored) != 8 || len(passes) != 8 {
		t.Errorf("buffered = %d/%d, want 8/8", len(ignored), len(passes))
	}
	// The first 8 events were kept, in order.
	for i := 0; i < 8; i++ {
		ev := <-passes
		if ev.Event != "MIGRATION_PASS" || ev.Data["pass"].(float64) != float64(i) || ev.Timestamp.Seconds == 0 {
			t.Errorf("event %d = %+v", i, ev)
		}
	}
	// Before the last reply was read: 2000 passes (+ up to 19 RESUMEs) seen.
	if d := c.DroppedEvents(); d < 2*(cmds*eventsPer)-16 {
		t.Errorf("DroppedEvents = %d, want about %d", d, 2*cmds*eventsPer-16)
	}
}

func TestSubscribeFilterAndCancel(t *testing.T) {
	sent := make(chan struct{})
	subscribed := make(chan struct{})
	c := startFake(t, func(f *fakeMon) {
		<-subscribed
		f.event("STOP", nil)
		f.event("RESUME", nil)
		f.event("SHUTDOWN", map[string]any{"guest": true})
		close(sent)
		req := f.expect("cont")
		f.reply(req.ID, struct{}{})
	})
	// Subscriptions made before the events are flushed through a command.
	onlyShutdown, cancel1 := c.Subscribe("SHUTDOWN")
	all, cancel2 := c.Subscribe()
	close(subscribed)
	<-sent
	if err := c.Cont(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Events were read before the cont reply, so they are buffered by now.
	if ev := <-onlyShutdown; ev.Event != "SHUTDOWN" || ev.Data["guest"] != true {
		t.Errorf("filtered event = %+v", ev)
	}
	var names []string
	for len(all) > 0 {
		names = append(names, (<-all).Event)
	}
	if strings.Join(names, ",") != "STOP,RESUME,SHUTDOWN" {
		t.Errorf("all events = %v", names)
	}
	cancel1()
	cancel1() // idempotent
	if _, ok := <-onlyShutdown; ok {
		t.Error("channel open after cancel")
	}
	c.Close()
	if _, ok := <-all; ok {
		t.Error("channel open after Close")
	}
	cancel2() // after close: no panic
	ch, cancel3 := c.Subscribe("X")
	if _, ok := <-ch; ok {
		t.Error("subscription on closed client is open")
	}
	cancel3()
}

func TestConcurrentCallsOutOfOrderReplies(t *testing.T) {
	const n = 16
	c := startFake(t, func(f *fakeMon) {
		var reqs []fakeReq
		for i := 0; i < n; i++ {
			req, ok := f.recv()
			if !ok {
				return
			}
			reqs = append(reqs, req)
		}
		for i := len(reqs) - 1; i >= 0; i-- { // answer in reverse
			var args struct{ N int }
			json.Unmarshal(reqs[i].Arguments, &args)
			f.reply(reqs[i].ID, args.N*10)
		}
	})
	ctx := testCtx(t, 5*time.Second)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got int
			if err := c.Execute(ctx, "echo", map[string]int{"n": i}, &got); err != nil {
				t.Errorf("call %d: %v", i, err)
			} else if got != i*10 {
				t.Errorf("call %d got reply %d", i, got)
			}
		}()
	}
	wg.Wait()
}

func TestIDLessErrorGoesToOldestCall(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		f.expect("bad")
		f.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "JSON parse error"}})
	})
	err := c.Execute(testCtx(t, 5*time.Second), "bad", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Cmd != "bad" || !errors.Is(err, ErrGenericError) {
		t.Fatalf("err = %v", err)
	}
}

// serveTree answers the client's qom-list polls of /machine/peripheral on
// f's connection, listing id while present says so, and hands every other
// command to the script through the channel it returns.
func serveTree(f *fakeMon, id string, present func() bool) <-chan fakeReq {
	ch := make(chan fakeReq)
	go func() {
		defer close(ch)
		for {
			req, ok := f.recv()
			if !ok {
				return
			}
			if req.Execute != "qom-list" {
				ch <- req
				continue
			}
			list := []map[string]string{{"name": "type", "type": "string"}}
			if present() {
				list = append(list, map[string]string{"name": id, "type": "child<vmxnet3>"})
			}
			f.reply(req.ID, list)
		}
	}()
	return ch
}

func TestDeviceDel(t *testing.T) {
	for _, order := range []string{"event-after-reply", "event-before-reply"} {
		t.Run(order, func(t *testing.T) {
			c := startFake(t, func(f *fakeMon) {
				reqs := serveTree(f, "nic1", func() bool { return true })
				req := <-reqs
				var args map[string]string
				json.Unmarshal(req.Arguments, &args)
				if req.Execute != "device_del" || args["id"] != "nic1" {
					f.t.Errorf("got %s %s", req.Execute, req.Arguments)
				}
				if order == "event-before-reply" { // QEMU does this for immediate unplug
					f.event("DEVICE_DELETED", map[string]any{"device": "nic1", "path": "/machine/peripheral/nic1"})
					f.reply(req.ID, struct{}{})
					return
				}
				f.reply(req.ID, struct{}{})
				f.event("DEVICE_DELETED", map[string]any{"path": "/machine/peripheral/nic1/virtio-backend"})
				f.event("DEVICE_DELETED", map[string]any{"device": "other", "path": "/machine/peripheral/other"})
				time.Sleep(20 * time.Millisecond)
				f.event("DEVICE_DELETED", map[string]any{"device": "nic1", "path": "/machine/peripheral/nic1"})
			})
			if err := c.DeviceDel(testCtx(t, 5*time.Second), "nic1"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// finalizingFake is a monitor on which nic1 leaves the device tree at the
// goneAt'th poll and sends its DEVICE_DELETED 100 ms after device_del's
// reply, failing any command before that, and which then expects next.
// reached, once the client has sent next, says when the DEVICE_DELETED
// went out and when next came in.
func finalizingFake(t *testing.T, goneAt int32, next string) (c *Client, polls *atomic.Int32, reached func() (deleted, at time.Time)) {
	polls = new(atomic.Int32)
	came := make(chan time.Time, 1)
	var deleted time.Time
	c = startFake(t, func(f *fakeMon) {
		reqs := serveTree(f, "nic1", func() bool { return polls.Add(1) < goneAt })
		req := <-reqs
		f.reply(req.ID, struct{}{})
		select {
		case req := <-reqs:
			f.t.Errorf("%s before nic1's DEVICE_DELETED", req.Execute)
		case <-time.After(100 * time.Millisecond):
		}
		deleted = time.Now()
		f.event("DEVICE_DELETED", map[string]any{"device": "nic1", "path": "/machine/peripheral/nic1"})
		req = <-reqs
		if req.Execute != next {
			f.t.Errorf("got %s, want %s", req.Execute, next)
		}
		came <- time.Now()
		f.reply(req.ID, struct{}{})
	})
	return c, polls, func() (time.Time, time.Time) {
		at := <-came
		return deleted, at
	}
}

// QEMU finalizes an unplugged device (and emits DEVICE_DELETED) only after
// its RCU callbacks; the device leaves the tree at the guest's eject.
// DeviceDel returns then, and a DeviceAdd of the same id waits for the
// DEVICE_DELETED.
func TestDeviceDelReturnsWhenGoneFromTree(t *testing.T) {
	c, polls, reached := finalizingFake(t, 3, "device_add")
	ctx := testCtx(t, 5*time.Second)
	if err := c.DeviceDel(ctx, "nic1"); err != nil {
		t.Fatal(err)
	}
	if n := polls.Load(); n != 3 {
		t.Errorf("DeviceDel returned after %d polls of the device tree, want 3 (gone at the third)", n)
	}
	if err := c.DeviceAdd(ctx, "vmxnet3", "nic1", nil); err != nil {
		t.Fatal(err)
	}
	if deleted, at := reached(); at.Before(deleted) {
		t.Error("device_add reached QEMU before the earlier nic1's DEVICE_DELETED")
	}
}

// A migration waits for every device DeviceDel returned for to be
// finalized: QEMU 10 hung in a precopy started while one was pending.
func TestMigrateWaitsForFinalizing(t *testing.T) {
	c, _, reached := finalizingFake(t, 2, "migrate")
	ctx := testCtx(t, 5*time.Second)
	if err := c.DeviceDel(ctx, "nic1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Migrate(ctx, "fd:state"); err != nil {
		t.Fatal(err)
	}
	if deleted, at := reached(); at.Before(deleted) {
		t.Error("migrate reached QEMU before nic1's DEVICE_DELETED")
	}
}

// A DEVICE_DELETED that never comes holds a DeviceAdd of the same id only
// for finalizeBound.
func TestDeviceAddAfterFinalizeBound(t *testing.T) {
	defer func(d time.Duration) { finalizeBound = d }(finalizeBound)
	finalizeBound = 50 * time.Millisecond
	c := startFake(t, func(f *fakeMon) {
		reqs := serveTree(f, "nic1", func() bool { return false })
		req := <-reqs
		f.reply(req.ID, struct{}{})
		req = <-reqs
		f.reply(req.ID, struct{}{})
	})
	ctx := testCtx(t, 5*time.Second)
	if err := c.DeviceDel(ctx, "nic1"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeviceAdd(ctx, "vmxnet3", "nic1", nil); err != nil {
		t.Fatal(err)
	}
}

func TestDeviceDelTimeout(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		reqs := serveTree(f, "hotnic", func() bool { return true })
		req := <-reqs
		f.reply(req.ID, struct{}{})
		f.event("DEVICE_DELETED", map[string]any{"device": "someone-else"})
	})
	start := time.Now()
	err := c.DeviceDel(testCtx(t, 200*time.Millisecond), "hotnic")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"hotnic"`) {
		t.Fatalf("err = %v, want DeadlineExceeded naming hotnic", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestDeviceDelErrors(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		req := f.expect("device_del")
		f.replyErr(req.ID, "DeviceNotFound", "Device 'ghost' not found")
		req = f.expect("device_del")
		f.reply(req.ID, struct{}{})
		f.event("DEVICE_UNPLUG_GUEST_ERROR", map[string]any{"device": "stubborn", "path": "/machine/peripheral/stubborn"})
	})
	ctx := testCtx(t, 5*time.Second)
	if err := c.DeviceDel(ctx, "ghost"); !errors.Is(err, ErrDeviceNotFound) {
		t.Errorf("ghost: %v", err)
	}
	if err := c.DeviceDel(ctx, "stubborn"); err == nil || !strings.Contains(err.Error(), "stubborn") {
		t.Errorf("stubborn: %v", err)
	}
}

func TestDisconnectFailsPendingCalls(t *testing.T) {
	received := make(chan struct{})
	var srv *fakeMon
	c := startFake(t, func(f *fakeMon) {
		srv = f
		f.expect("query-migrate")
		close(received)
	})
	events, cancel := c.Subscribe()
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "query-migrate", nil, nil) }()
	<-received
	srv.conn.Close() // QEMU goes away with the call in flight
	select {
	case err := <-errc:
		if !errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "query-migrate") {
			t.Fatalf("pending call err = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("pending call not failed promptly")
	}
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := c.Err(); !errors.Is(err, ErrDisconnected) || !errors.Is(err, io.EOF) {
		t.Errorf("Err = %v, want ErrDisconnected wrapping EOF", err)
	}
	if _, ok := <-events; ok {
		t.Error("subscription not closed on disconnect")
	}
	if err := c.Stop(context.Background()); !errors.Is(err, ErrDisconnected) {
		t.Errorf("call after disconnect: %v", err)
	}
	if err := c.Connect(); !errors.Is(err, ErrDisconnected) {
		t.Errorf("Connect after disconnect: %v", err)
	}
	if _, err := c.Events(context.Background()); !errors.Is(err, ErrDisconnected) {
		t.Errorf("Events after disconnect: %v", err)
	}
}

func TestCloseFailsPendingCalls(t *testing.T) {
	received := make(chan struct{})
	c := startFake(t, func(f *fakeMon) {
		f.expect("query-status")
		close(received)
		f.recv() // wait for EOF
	})
	errc := make(chan error, 1)
	go func() { _, err := c.Status(context.Background()); errc <- err }()
	<-received
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := <-errc; !errors.Is(err, ErrDisconnected) {
		t.Errorf("pending: %v", err)
	}
	<-c.Done()
	if c.Close() != nil {
		t.Error("second Close returned error")
	}
	if !errors.Is(c.Err(), ErrDisconnected) || !strings.Contains(c.Err().Error(), "closed by client") {
		t.Errorf("Err = %v", c.Err())
	}
}

func TestContextCancelCall(t *testing.T) {
	got := make(chan fakeReq, 1)
	release := make(chan struct{})
	c := startFake(t, func(f *fakeMon) {
		req := f.expect("migrate")
		got <- req
		<-release
		f.reply(req.ID, struct{}{}) // late reply for the abandoned call
		req2 := f.expect("query-status")
		f.reply(req2.ID, map[string]any{"status": "running", "running": true})
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Migrate(ctx, "fd:mig") }()
	req := <-got
	if !strings.Contains(string(req.Arguments), `"uri":"fd:mig"`) {
		t.Errorf("migrate args %s", req.Arguments)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "migrate") {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("cancel did not return")
	}
	close(release)
	st, err := c.Status(testCtx(t, 5*time.Second))
	if err != nil || st.Status != "running" {
		t.Fatalf("client unusable after cancelled call: %+v %v", st, err)
	}
	if err := c.Stop(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("call with done ctx: %v", err)
	}
}

// A write that cannot complete (QEMU not reading) honours ctx too.
func TestContextCancelBlockedWrite(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		// Stop reading entirely; net.Pipe writes block.
	})
	ctx := testCtx(t, 150*time.Millisecond)
	err := c.Execute(ctx, "query-status", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	// Nothing was written, so the stream is intact and the client alive.
	if c.Err() != nil {
		t.Fatalf("client died: %v", c.Err())
	}
}

func TestExecuteWithFileNeedsUnixConn(t *testing.T) {
	c := startFake(t, nil)
	err := c.GetFD(testCtx(t, time.Second), "mig", os.Stdout)
	if !errors.Is(err, ErrFDPassingUnsupported) || !strings.Contains(err.Error(), "getfd") {
		t.Fatalf("err = %v", err)
	}
}

// ExecuteWithFile over a real unix socket: the fake QEMU receives the fd.
func TestExecuteWithFileUnix(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()

	srvErr := make(chan error, 1)
	go func() {
		conn, err := ln.AcceptUnix()
		if err != nil {
			srvErr <- err
			return
		}
		defer conn.Close()
		f := &fakeMon{t: t, conn: conn}
		f.handshakeUnix(srvErr, func(req fakeReq, fd int) {
			if req.Execute != "getfd" || !strings.Contains(string(req.Arguments), `"fdname":"mig"`) || fd < 0 {
				srvErr <- errors.New("bad getfd: " + string(req.Arguments))
				return
			}
			// Prove it is the pipe's write end.
			w := os.NewFile(uintptr(fd), "passed")
			_, err := w.Write([]byte("hello"))
			w.Close()
			f.reply(req.ID, struct{}{})
			srvErr <- err
		})
	}()
	c, err := Dial(testCtx(t, 5*time.Second), "unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.GetFD(testCtx(t, 5*time.Second), "mig", pw); err != nil {
		t.Fatal(err)
	}
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(pr, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("pipe read %q %v", buf, err)
	}
}

// handshakeUnix speaks the handshake on a unix conn and hands the next
// command (with any received fd, else -1) to fn.
func (f *fakeMon) handshakeUnix(errc chan<- error, fn func(fakeReq, int)) {
	uc := f.conn.(*net.UnixConn)
	f.greet()
	read := func() (fakeReq, int, error) {
		buf := make([]byte, 4096)
		oob := make([]byte, 128)
		n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
		if err != nil {
			return fakeReq{}, -1, err
		}
		var req fakeReq
		if err := json.Unmarshal(buf[:n], &req); err != nil {
			return req, -1, err
		}
		fd := -1
		if oobn > 0 {
			fds, err := parseRights(oob[:oobn])
			if err != nil {
				return req, -1, err
			}
			fd = fds[0]
		}
		return req, fd, nil
	}
	req, _, err := read()
	if err != nil || req.Execute != "qmp_capabilities" {
		errc <- errors.New("handshake failed")
		return
	}
	f.reply(req.ID, struct{}{})
	req, fd, err := read()
	if err != nil {
		errc <- err
		return
	}
	fn(req, fd)
}

func TestQuit(t *testing.T) {
	t.Run("reply-then-close", func(t *testing.T) {
		c := startFake(t, func(f *fakeMon) {
			req := f.expect("quit")
			f.reply(req.ID, struct{}{})
			f.event("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
			f.conn.Close()
		})
		if err := c.Quit(testCtx(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
		<-c.Done()
	})
	t.Run("close-without-reply", func(t *testing.T) {
		c := startFake(t, func(f *fakeMon) {
			f.expect("quit")
			f.conn.Close()
		})
		if err := c.Quit(testCtx(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("never-closes", func(t *testing.T) {
		c := startFake(t, func(f *fakeMon) {
			req := f.expect("quit")
			f.reply(req.ID, struct{}{})
			f.recv()
		})
		if err := c.Quit(testCtx(t, 150*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestWaitMigration(t *testing.T) {
	t.Run("completed", func(t *testing.T) {
		c := startFake(t, func(f *fakeMon) {
			for _, st := range []string{"setup", "active", "active"} {
				req := f.expect("query-migrate")
				f.reply(req.ID, map[string]any{"status": st, "ram": map[string]any{"transferred": 100, "remaining": 50, "mbps": 1.5}})
			}
			f.event("MIGRATION", map[string]any{"status": "completed"})
			req := f.expect("query-migrate")
			f.reply(req.ID, map[string]any{"status": "completed", "total-time": 1234, "downtime": 12, "setup-time": 3,
				"ram": map[string]any{"transferred": 4096, "total": 67108864, "page-size": 4096, "dirty-sync-count": 2}})
		})
		var seen []string
		mi, err := c.WaitMigration(testCtx(t, 5*time.Second), 10*time.Millisecond, func(mi MigrationInfo) {
			seen = append(seen, mi.Status)
		})
		if err != nil {
			t.Fatal(err)
		}
		if mi.Status != "completed" || mi.TotalTime != 1234 || mi.Downtime != 12 || mi.RAM.Transferred != 4096 || mi.RAM.PageSize != 4096 || mi.RAM.DirtySyncCount != 2 {
			t.Errorf("final = %+v", mi)
		}
		if strings.Join(seen, ",") != "setup,active,active" {
			t.Errorf("progress = %v", seen)
		}
	})
	t.Run("failed", func(t *testing.T) {
		c := startFake(t, func(f *fakeMon) {
			req := f.expect("query-migrate")
			f.reply(req.ID, map[string]any{"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"})
		})
		mi, err := c.WaitMigration(testCtx(t, 5*time.Second), 10*time.Millisecond, nil)
		if !errors.Is(err, ErrMigrationFailed) || !strings.Contains(err.Error(), "Broken pipe") || mi.Status != "failed" {
			t.Fatalf("mi=%+v err=%v", mi, err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		c := startFake(t, func(f *fakeMon) {
			req := f.expect("query-migrate")
			f.reply(req.ID, map[string]any{"status": "cancelled"})
		})
		if _, err := c.WaitMigration(testCtx(t, 5*time.Second), 10*time.Millisecond, nil); !errors.Is(err, ErrMigrationCancelled) {
			t.Fatalf("err=%v", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		c := startFake(t, func(f *fakeMon) {
			for {
				req, ok := f.recv()
				if !ok {
					return
				}
				f.reply(req.ID, map[string]any{"status": "active"})
			}
		})
		_, err := c.WaitMigration(testCtx(t, 100*time.Millisecond), 10*time.Millisecond, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err=%v", err)
		}
	})
}

func TestTypedCommandArguments(t *testing.T) {
	want := map[string]string{
		"migrate-set-capabilities": `{"capabilities":[{"capability":"auto-converge","state":false},{"capability":"xbzrle","state":true}]}`,
		"migrate-set-parameters":   `{"downtime-limit":300}`,
		"migrate-incoming":         `{"uri":"fd:in"}`,
		"migrate_cancel":           ``,
		"device_add":               `{"driver":"vmxnet3","id":"nic1","netdev":"n0"}`,
		"closefd":                  `{"fdname":"mig"}`,
		"system_powerdown":         ``,
		"cont":                     ``,
	}
	order := []string{"migrate-set-capabilities", "migrate-set-parameters", "migrate-incoming", "migrate_cancel", "device_add", "closefd", "system_powerdown", "cont"}
	c := startFake(t, func(f *fakeMon) {
		for _, cmd := range order {
			req := f.expect(cmd)
			if string(req.Arguments) != want[cmd] {
				f.t.Errorf("%s arguments = %s, want %s", cmd, req.Arguments, want[cmd])
			}
			f.reply(req.ID, struct{}{})
		}
	})
	ctx := testCtx(t, 5*time.Second)
	steps := []error{
		c.MigrateSetCapabilities(ctx, map[string]bool{"xbzrle": true, "auto-converge": false}),
		c.MigrateSetParameters(ctx, map[string]any{"downtime-limit": 300}),
		c.MigrateIncoming(ctx, "fd:in"),
		c.MigrateCancel(ctx),
		c.DeviceAdd(ctx, "vmxnet3", "nic1", map[string]any{"netdev": "n0"}),
		c.CloseFD(ctx, "mig"),
		c.SystemPowerdown(ctx),
		c.Cont(ctx),
	}
	for i, err := range steps {
		if err != nil {
			t.Errorf("%s: %v", order[i], err)
		}
	}
}

const pciFixture = `[{"bus":0,"devices":[
 {"bus":0,"slot":0,"function":0,"class_info":{"desc":"Host bridge","class":1536},"id":{"device":10688,"vendor":32902,"subsystem":4352,"subsystem-vendor":6900},"qdev_id":"","regions":[]},
 {"bus":0,"slot":2,"function":0,"class_info":{"desc":"PCI bridge","class":1540},"id":{"device":12,"vendor":6966},"qdev_id":"rp1","regions":[],
  "pci_bridge":{"bus":{"number":0,"secondary":1,"subordinate":2,"io_range":{"base":0,"limit":0}},"devices":[
   {"bus":1,"slot":0,"function":0,"class_info":{"class":1540},"id":{"device":14,"vendor":6966},"qdev_id":"br2",
    "pci_bridge":{"bus":{"number":1,"secondary":2,"subordinate":2},"devices":[
     {"bus":2,"slot":3,"function":0,"class_info":{"desc":"Ethernet controller","class":512},"id":{"device":1968,"vendor":5549},"qdev_id":"deepnic"}]}}]}}]}]`

func TestQueryPCIAndFind(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		req := f.expect("query-pci")
		f.sendRaw([]byte(`{"return": ` + strings.ReplaceAll(pciFixture, "\n", "") + `, "id": "` + req.ID + `"}`))
	})
	buses, err := c.QueryPCI(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := FindPCIDevice(buses, "deepnic")
	if !ok || d.Bus != 2 || d.Slot != 3 || d.ID.Vendor != 5549 || d.ClassInfo.Desc != "Ethernet controller" {
		t.Errorf("deepnic = %+v, %v", d, ok)
	}
	if d, ok := FindPCIDevice(buses, "br2"); !ok || d.PCIBridge == nil || d.PCIBridge.Bus.Secondary != 2 {
		t.Errorf("br2 = %+v, %v", d, ok)
	}
	if _, ok := FindPCIDevice(buses, "missing"); ok {
		t.Error("found missing device")
	}
	if _, ok := FindPCIDevice(nil, ""); ok {
		t.Error("found in nil")
	}
}

// go-qemu's generated raw API runs on *Client via the qmp.Monitor interface.
func TestRawMonitorInterop(t *testing.T) {
	c := startFake(t, func(f *fakeMon) {
		req := f.expect("query-status")
		f.reply(req.ID, map[string]any{"status": "paused", "running": false, "singlestep": false})
		req = f.expect("device_del")
		f.replyErr(req.ID, "DeviceNotFound", "Device 'x' not found")
		f.event("STOP", nil)
	})
	var _ goqmp.Monitor = c
	ctx, cancel := context.WithCancel(context.Background())
	events, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := raw.NewMonitor(c)
	st, err := r.QueryStatus()
	if err != nil || st.Status != raw.RunStatePaused || st.Running {
		t.Fatalf("raw QueryStatus = %+v, %v", st, err)
	}
	if err := r.DeviceDel("x"); !errors.Is(err, ErrDeviceNotFound) {
		t.Fatalf("raw DeviceDel err = %v", err)
	}
	if ev := <-events; ev.Event != "STOP" {
		t.Errorf("event = %+v", ev)
	}
	cancel()
	for range events { // closed by ctx cancellation
	}
	if _, err := c.Run([]byte(`{"arguments": {}}`)); err == nil {
		t.Error("Run without execute succeeded")
	}
	if err := c.Disconnect(); err != nil {
		t.Error(err)
	}
	<-c.Done()
}

func TestWithLogger(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	subscribed := make(chan struct{})
	c := startFake(t, func(f *fakeMon) {
		<-subscribed
		f.event("STOP", nil)
		f.event("STOP", nil)
		req := f.expect("cont")
		f.reply(req.ID, struct{}{})
	}, WithLogger(log), WithEventBuffer(1))
	_, cancel := c.Subscribe()
	defer cancel()
	close(subscribed)
	_ = c.Cont(testCtx(t, 5*time.Second))
	c.Close()
	out := buf.String()
	if !strings.Contains(out, "event dropped") || !strings.Contains(out, "disconnected") {
		t.Errorf("log output:\n%s", out)
	}
}

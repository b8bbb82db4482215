package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeMon is the QEMU side of a scripted monitor over net.Pipe.
type fakeMon struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex
}

type fakeReq struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        string          `json:"id"`
}

func newFakePair(t *testing.T) (*fakeMon, net.Conn) {
	t.Helper()
	srv, cli := net.Pipe()
	t.Cleanup(func() { srv.Close(); cli.Close() })
	return &fakeMon{t: t, conn: srv, r: bufio.NewReader(srv)}, cli
}

func (f *fakeMon) sendRaw(b []byte) bool {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_, err := f.conn.Write(append(b, '\r', '\n'))
	return err == nil
}

func (f *fakeMon) send(v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		f.t.Errorf("fake: marshal: %v", err)
		return false
	}
	return f.sendRaw(b)
}

// recv reads one command; ok is false on EOF/close.
func (f *fakeMon) recv() (fakeReq, bool) {
	line, err := f.r.ReadBytes('\n')
	if err != nil {
		return fakeReq{}, false
	}
	var req fakeReq
	if err := json.Unmarshal(line, &req); err != nil {
		f.t.Errorf("fake: bad request %q: %v", line, err)
		return fakeReq{}, false
	}
	return req, true
}

// expect reads one command and checks its name.
func (f *fakeMon) expect(cmd string) fakeReq {
	req, ok := f.recv()
	if !ok {
		f.t.Errorf("fake: expected %q, got EOF", cmd)
		return req
	}
	if req.Execute != cmd {
		f.t.Errorf("fake: expected %q, got %q", cmd, req.Execute)
	}
	if req.ID == "" {
		f.t.Errorf("fake: command %q has no id", req.Execute)
	}
	return req
}

func (f *fakeMon) greet() bool {
	return f.sendRaw([]byte(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}`))
}

func (f *fakeMon) handshake() {
	f.greet()
	req := f.expect("qmp_capabilities")
	if len(req.Arguments) != 0 {
		f.t.Errorf("fake: qmp_capabilities with arguments %s", req.Arguments)
	}
	f.reply(req.ID, struct{}{})
}

func (f *fakeMon) reply(id string, ret any) bool {
	return f.send(map[string]any{"return": ret, "id": id})
}

func (f *fakeMon) replyErr(id, class, desc string) bool {
	return f.send(map[string]any{"error": map[string]string{"class": class, "desc": desc}, "id": id})
}

func (f *fakeMon) event(name string, data map[string]any) bool {
	now := time.Now()
	return f.send(map[string]any{
		"event":     name,
		"data":      data,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
	})
}

// startFake runs handshake and then script on the QEMU side, and returns a
// connected client. The script goroutine is waited for in Cleanup.
func startFake(t *testing.T, script func(f *fakeMon), opts ...Option) *Client {
	t.Helper()
	f, cli := newFakePair(t)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.handshake()
		if script != nil {
			script(f)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := New(ctx, cli, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		f.conn.Close()
		wg.Wait()
	})
	return c
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// parseRights extracts descriptors from SCM_RIGHTS ancillary data.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		f, err := syscall.ParseUnixRights(&m)
		if err != nil {
			return nil, err
		}
		fds = append(fds, f...)
	}
	if len(fds) == 0 {
		return nil, errors.New("no descriptors in ancillary data")
	}
	return fds, nil
}

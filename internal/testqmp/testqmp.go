// Package testqmp is a scripted QEMU monitor for unit tests of code that
// drives QEMU over QMP: it greets as a given QEMU version, answers every
// command through the test's handler, and records what it was asked. It
// speaks over a unix socket pair, so descriptors can be passed (getfd).
// It is for unit tests of a protocol only; features are tested on a real
// QEMU.
package testqmp

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// Request is one command the monitor got.
type Request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// String is the command and its arguments as sent.
func (r Request) String() string { return r.Execute + " " + string(r.Arguments) }

// Reply is a handler's answer: Return (nil: an empty object), else Error
// (a GenericError with that description); Hangup closes the monitor
// without answering, as a QEMU that died on the command.
type Reply struct {
	Return any
	Error  string
	Hangup bool
}

// Handler answers one command.
type Handler func(Request) Reply

// Monitor is the scripted QEMU side.
type Monitor struct {
	mu    sync.Mutex
	asked []Request
	done  chan struct{}
}

// Asked is every command so far, in order (qmp_capabilities included).
func (m *Monitor) Asked() []Request {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.asked)
}

// Commands are the names of Asked.
func (m *Monitor) Commands() []string {
	var v []string
	for _, r := range m.Asked() {
		v = append(v, r.Execute)
	}
	return v
}

// Done is closed once the monitor stopped: it hung up, or the client
// closed.
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Start connects a qmp.Client to a scripted monitor greeting as QEMU
// major.0.2; h nil answers every command with an empty object.
func Start(t testing.TB, major int, h Handler) (*qmp.Client, *Monitor) {
	t.Helper()
	srv, cli := socketPair(t)
	m := &Monitor{done: make(chan struct{})}
	go m.serve(srv, major, h)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mon, err := qmp.New(ctx, cli, qmp.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close(); srv.Close() })
	return mon, m
}

func (m *Monitor) serve(srv net.Conn, major int, h Handler) {
	defer close(m.done)
	defer srv.Close()
	w := json.NewEncoder(srv)
	w.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{
		"qemu": map[string]int{"major": major, "minor": 0, "micro": 2}, "package": ""}, "capabilities": []string{}}})
	r := bufio.NewReader(srv)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var req Request
		json.Unmarshal(line, &req)
		m.mu.Lock()
		m.asked = append(m.asked, req)
		m.mu.Unlock()
		reply := Reply{}
		if h != nil {
			reply = h(req)
		}
		switch {
		case reply.Hangup:
			return
		case reply.Error != "":
			w.Encode(map[string]any{"id": req.ID, "error": map[string]any{"class": "GenericError", "desc": reply.Error}})
		default:
			ret := reply.Return
			if ret == nil {
				ret = map[string]any{}
			}
			w.Encode(map[string]any{"id": req.ID, "return": ret})
		}
	}
}

// socketPair is a connected unix stream socket pair.
func socketPair(t testing.TB) (srv, cli net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "qmp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

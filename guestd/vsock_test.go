package guestd

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/symvirt/symvirt/guestproto"
)

// TestVsockChannel serves guestd on vsock and talks to it through the
// kernel's local vsock transport (CID 1), which needs no VM. Where the
// kernel has no vsock loopback the test says so and skips: the host here
// has no /dev/vhost-vsock either, so no guest could have a vsock channel.
func TestVsockChannel(t *testing.T) {
	const port = 10240 + 7
	ln, err := vsock.Listen(port, nil)
	if err != nil {
		t.Skipf("vsock unavailable on this kernel (listen: %v); the end-to-end tests use virtio-serial", err)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := vsock.Dial(vsock.Local, port, nil)
	ln.Close()
	if err != nil {
		t.Skipf("vsock loopback (CID 1, vsock_loopback) unavailable on this kernel: %v; the end-to-end tests use virtio-serial", err)
	}
	c.Close()
	cfg := Config{Channel: "vsock", VsockPort: port, Logger: testLogger(t), Heartbeat: -1,
		HookSocket: filepath.Join(t.TempDir(), "hook.sock"), HookDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var conn *vsock.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err = vsock.Dial(vsock.Local, port, nil)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial guestd over vsock: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h := guestproto.NewHost(conn, testLogger(t))
	defer h.Close()
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if ack, err := h.Handshake(rctx); err != nil || ack.State != guestproto.StateIdle {
		t.Fatalf("handshake over vsock: %+v %v", ack, err)
	}
	if err := h.Prepare(rctx, guestproto.Prepare{ID: "v1", Op: guestproto.OpCheckpoint, Deadline: 2 * time.Second}); err != nil {
		t.Fatalf("prepare over vsock: %v", err)
	}
	if err := h.Resume(rctx, "v1", guestproto.OutcomeCheckpointed); err != nil {
		t.Fatalf("resume over vsock: %v", err)
	}
	cancel()
	<-done
}

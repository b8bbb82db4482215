package taint

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

type fakeSource struct {
	mu     sync.Mutex
	taints map[int]Taint
	resets []int
}

func (f *fakeSource) Tainted() []Taint {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Taint
	for _, t := range f.taints {
		out = append(out, t)
	}
	return out
}

func (f *fakeSource) IsTainted(pid int) (Taint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.taints[pid]
	return t, ok
}

func (f *fakeSource) Reset(pid int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pid == 13 {
		return errors.New("unlucky")
	}
	f.resets = append(f.resets, pid)
	if pid == 0 {
		clear(f.taints)
	}
	delete(f.taints, pid)
	return nil
}

func (f *fakeSource) Counts() (uint64, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return uint64(len(f.taints)), 7
}

func TestServeAndClient(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	want := Taint{PID: 42, Comm: "curl", Kind: KindConnect, Peer: netip.MustParseAddrPort("192.0.2.1:443"), Since: since}
	src := &fakeSource{taints: map[int]Taint{
		42: want,
		43: {PID: 43, Comm: "sh", Kind: KindIPC, Channel: ChannelPipe, Via: 42, Peer: want.Peer, Since: since},
	}}
	path := filepath.Join(t.TempDir(), "taint.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(l, src) }()
	defer func() {
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	if _, err := Listen(path); err == nil {
		t.Error("a second Listen on a socket in use succeeded")
	}

	ctx := context.Background()
	c := NewClient(path)
	list, err := Query(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("List: %+v", list)
	}
	got, ok, err := c.Get(ctx, 42)
	if err != nil || !ok || got != want {
		t.Fatalf("Get(42) = %+v, %v, %v; want %+v", got, ok, err, want)
	}
	if _, ok, err := c.Get(ctx, 44); ok || err != nil {
		t.Fatalf("Get(44) = %v, %v; want not tainted", ok, err)
	}
	n, err := c.Counts(ctx)
	if err != nil || n != (Counts{Tainted: 2, Events: 7}) {
		t.Fatalf("Counts = %+v, %v", n, err)
	}
	if n, err := c.Reset(ctx, 42); err != nil || n.Tainted != 1 {
		t.Fatalf("Reset(42) = %+v, %v", n, err)
	}
	if _, err := c.Reset(ctx, 13); err == nil {
		t.Fatal("Reset(13) did not pass the error on")
	}
	if n, err := c.Reset(ctx, 0); err != nil || n.Tainted != 0 {
		t.Fatalf("Reset(0) = %+v, %v", n, err)
	}
	if _, err := Query(ctx, filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Fatal("Query of a missing socket succeeded")
	}
}

func TestIsOutside(t *testing.T) {
	mgmt := []netip.Prefix{netip.MustParsePrefix("192.168.122.0/24")}
	for _, c := range []struct {
		peer, local string
		want        bool
	}{
		{"192.0.2.1", "10.0.0.5", true},
		{"127.0.0.1", "127.0.0.1", false},
		{"127.3.4.5", "", false},
		{"::1", "::1", false},
		{"::ffff:127.0.0.1", "", false},
		{"0.0.0.0", "", false},
		{"10.0.0.5", "10.0.0.5", false}, // own address
		{"192.168.122.9", "10.0.0.5", false},
		{"::ffff:192.168.122.9", "", false},
		{"2001:db8::1", "2001:db8::2", true},
	} {
		var local netip.Addr
		if c.local != "" {
			local = netip.MustParseAddr(c.local)
		}
		if got := IsOutside(netip.MustParseAddr(c.peer), local, mgmt); got != c.want {
			t.Errorf("IsOutside(%s, %s) = %v, want %v", c.peer, c.local, got, c.want)
		}
	}
}

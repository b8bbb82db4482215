package hostd_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// echoRC runs a persistent TCP echo service in the guest.
const echoRC = `#!/bin/sh
nc -ll -p 7000 -e cat </dev/null >/dev/null 2>&1 &
`

// echoClient keeps one TCP connection busy (a message every 20 ms, each
// echoed back) and records the longest gap between two echoes.
type echoClient struct {
	mu      sync.Mutex
	last    time.Time
	maxGap  time.Duration
	count   int
	err     error
	stopped chan struct{}
	done    chan struct{}
}

func startEcho(t *testing.T, ns *testenv.NetNS, addr string) *echoClient {
	var conn interface {
		io.ReadWriter
		SetDeadline(time.Time) error
		Close() error
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := testenv.DialIn(ns, addr, 2*time.Second)
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("echo service %s unreachable: %v", addr, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	e := &echoClient{last: time.Now(), stopped: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		defer conn.Close()
		buf := make([]byte, 16)
		for seq := uint64(0); ; seq++ {
			select {
			case <-e.stopped:
				return
			case <-time.After(20 * time.Millisecond):
			}
			msg := make([]byte, 16)
			binary.BigEndian.PutUint64(msg, seq)
			conn.SetDeadline(time.Now().Add(60 * time.Second))
			if _, err := conn.Write(msg); err == nil {
				_, err = io.ReadFull(conn, buf)
				if err == nil && !bytes.Equal(buf, msg) {
					err = io.ErrUnexpectedEOF
				}
				if err != nil {
					e.mu.Lock()
					e.err = err
					e.mu.Unlock()
					return
				}
			}
			now := time.Now()
			e.mu.Lock()
			e.maxGap = max(e.maxGap, now.Sub(e.last))
			e.last = now
			e.count++
			e.mu.Unlock()
		}
	}()
	return e
}

func (e *echoClient) stop() (time.Duration, int, error) {
	close(e.stopped)
	<-e.done
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.maxGap, e.count, e.err
}

// The guest's bond of a passthrough-tagged vmxnet3 and a virtio NIC keeps
// a TCP connection from outside the VM alive across detach, live
// migration to another host and re-attach of that host's NIC.
func TestBondedConnectionSurvivesMigration(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:01")
	// The guests' L2: a bridge per host, joined across hosts, and a client
	// namespace on it.
	for _, h := range []*testenv.Hostd{src, dst} {
		testenv.Bridge(t, h.NS, "br0")
		testenv.Tap(t, h.NS, "tpt0", "br0")
		testenv.Tap(t, h.NS, "tnet1", "br0")
	}
	testenv.BridgeLink(t, src.NS, "br0", dst.NS, "br0")
	client := testenv.NewNetNS(t, "c")
	testenv.Attach(t, client, "10.79.0.1/24", src.NS, "br0")

	ctx := ctxT(t, 5*time.Minute)
	spec := coopSpec(t, "bond1", "nic", map[string]testguest.File{
		"/etc/symvirt/rc.d/40-echo": {Mode: 0o755, Data: []byte(echoRC)}})
	spec.Append += " symvirt.bond=1 symvirt.ip=10.79.0.10/24"
	spec.NICs[0].Backend, spec.NICs[0].Tap = "tap", "tpt0"
	spec.NICs[1].Backend, spec.NICs[1].Tap = "tap", "tnet1"
	if _, err := src.Client().Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	waitLog(t, serialLog(src, "bond1"), regexp.MustCompile(`hook: registered`), 90*time.Second)
	echo := startEcho(t, client, "10.79.0.10:7000")
	time.Sleep(2 * time.Second)
	before, _, _ := func() (time.Duration, int, error) {
		echo.mu.Lock()
		defer echo.mu.Unlock()
		return echo.maxGap, echo.count, echo.err
	}()

	res, err := src.Client().Migrate(ctx, "bond1", hostd.MigrateOptions{To: dst.Addr()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dlog := serialLog(dst, "bond1")
	waitLog(t, dlog, regexp.MustCompile(`hook: outcome migrated`), 30*time.Second)
	// The destination's NIC is back in the bond, carrying the traffic.
	waitLog(t, dlog, regexp.MustCompile(`(vmxnet3\) enslaved to bond0|bond0 primary: eth|new NIC enslaved)`), 30*time.Second)
	time.Sleep(3 * time.Second)
	gap, n, err := echo.stop()
	if err != nil {
		t.Fatalf("the TCP connection broke: %v (after %d echoes)", err, n)
	}
	t.Logf("TCP echo across detach + migrate + re-attach: %d echoes, longest gap %s (before the operation %s); QEMU downtime %s, whole migration %s",
		n, gap.Round(time.Millisecond), before.Round(time.Millisecond), res.Downtime, res.Duration.Round(time.Millisecond))
	if n < 100 {
		t.Fatalf("only %d echoes", n)
	}
}

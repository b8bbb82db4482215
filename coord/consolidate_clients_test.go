package coord_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

// echoClients are the services' clients, by job name.
type echoClients map[string]*echoClient

// startEchoClients starts a client of each of the n services (svc1 at
// 10.79.0.1, ...) in ns, stopped at the test's end.
func startEchoClients(t *testing.T, ns *testenv.NetNS, n int) echoClients {
	stop := make(chan struct{})
	clients := echoClients{}
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		e := &echoClient{addr: fmt.Sprintf("10.79.0.%d:7000", i), gaps: map[int]time.Duration{}, rtts: map[int]time.Duration{}, gapEnd: map[int]time.Time{}}
		clients[fmt.Sprintf("svc%d", i)] = e
		wg.Add(1)
		go func() { defer wg.Done(); e.run(ns, stop) }()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	return clients
}

// setPhase starts phase p of every client, asking every every (0: the
// default 100 ms).
func (cs echoClients) setPhase(p int, every time.Duration) {
	for _, e := range cs {
		e.mu.Lock()
		e.phase, e.every = p, every
		e.mu.Unlock()
	}
}

// check logs each client's longest gap and round trip in phase, and fails
// the test for a client that failed.
func (cs echoClients) check(t *testing.T, when string, phase int) {
	t.Helper()
	for name, e := range cs {
		e.mu.Lock()
		t.Logf("%s: client of %s: longest gap between answers %v (from %s to %s), longest round trip %v (%d answers)",
			when, name, e.gaps[phase].Round(time.Millisecond), e.gapEnd[phase].Add(-e.gaps[phase]).UTC().Format(stampMs),
			e.gapEnd[phase].UTC().Format(stampMs), e.rtts[phase].Round(time.Millisecond), e.count)
		if e.err != nil {
			t.Errorf("%s: client of %s failed: %v", when, name, e.err)
		}
		e.mu.Unlock()
	}
}

// waitAnswering waits until every service has answered its client more
// than ten times.
func (cs echoClients) waitAnswering(t *testing.T, timeout time.Duration) {
	t.Helper()
	for end := time.Now().Add(timeout); ; time.Sleep(time.Second) {
		ready := 0
		for _, e := range cs {
			if e.answered() > 10 {
				ready++
			}
		}
		if ready == len(cs) {
			return
		}
		if time.Now().After(end) {
			cs.check(t, "boot", 0)
			t.Fatalf("only %d of %d services answer", ready, len(cs))
		}
	}
}

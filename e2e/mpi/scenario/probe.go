package scenario

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

// probe measures the network stall the job saw from outside: from host a's
// bridge it opens a TCP connection to a closed port of each VM every
// probeEvery. The guest kernel's reset (or an accept) is an answer; a
// VM whose traffic is held, stopped, gone or moving answers late or not.
type probe struct {
	mu      sync.Mutex
	answers map[string][]time.Time // per VM IP, when each answer came
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

const (
	probeEvery = 200 * time.Millisecond
	probePort  = "9" // discard: nothing listens in the guest
)

func startProbe(ns *testenv.NetNS, ips ...string) *probe {
	p := &probe{answers: map[string][]time.Time{}, stop: make(chan struct{})}
	for _, ip := range ips {
		p.wg.Add(1)
		go p.loop(ns, ip)
	}
	return p
}

func (p *probe) loop(ns *testenv.NetNS, ip string) {
	defer p.wg.Done()
	for {
		conn, err := testenv.DialIn(ns, net.JoinHostPort(ip, probePort), time.Second)
		if conn != nil {
			conn.Close()
		}
		if err == nil || errors.Is(err, syscall.ECONNREFUSED) {
			p.mu.Lock()
			p.answers[ip] = append(p.answers[ip], time.Now())
			p.mu.Unlock()
		}
		select {
		case <-p.stop:
			return
		case <-time.After(probeEvery):
		}
	}
}

// close stops the probes; it may be called more than once.
func (p *probe) close() {
	p.once.Do(func() { close(p.stop) })
	p.wg.Wait()
}

// stall is the longest time without an answer from ip that overlaps
// [from, to]: from the last answer before from to the first after to at
// most. Zero if ip was never answered before from.
func (p *probe) stall(ip string, from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var prev time.Time
	var longest time.Duration
	for _, a := range p.answers[ip] {
		if !a.After(from) {
			prev = a
			continue
		}
		if !prev.IsZero() && a.Sub(prev) > longest {
			longest = a.Sub(prev)
		}
		prev = a
		if a.After(to) {
			break
		}
	}
	return longest
}

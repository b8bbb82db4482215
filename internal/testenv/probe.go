package testenv

import (
	"encoding/binary"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// Prober is a peer outside a job on the guests' network: it pings every
// address every period (ICMP echo, answered by the guest's kernel, so a
// guest busy computing still answers) and records, per address, the
// longest time no answer came, on the host's clock. A fenced or paused VM
// shows as a gap; a fence's held requests, answered in a burst when it
// lifts, end it.
type Prober struct {
	conn  net.PacketConn
	addrs []string
	id    uint16
	stop  chan struct{}
	done  sync.WaitGroup

	mu   sync.Mutex
	last map[string]time.Time
	gaps map[string][]ProbeGap
}

// ProbeGap is a time an address did not answer: From its last answer To
// the next one.
type ProbeGap struct{ From, To time.Time }

// Len is the gap's length.
func (g ProbeGap) Len() time.Duration { return g.To.Sub(g.From) }

// Probe starts pinging addrs (IPv4) from namespace ns every period.
func Probe(t testing.TB, ns *NetNS, addrs []string, period time.Duration) *Prober {
	conn, err := listenICMPIn(ns)
	if err != nil {
		t.Fatalf("prober in %s: %v", ns.Name, err)
	}
	p := &Prober{conn: conn, addrs: addrs, id: uint16(os.Getpid()), stop: make(chan struct{}),
		last: map[string]time.Time{}, gaps: map[string][]ProbeGap{}}
	p.done.Add(2)
	go p.send(period)
	go p.receive()
	t.Cleanup(p.Stop)
	return p
}

// listenICMPIn opens a raw ICMP socket inside ns; it stays there.
func listenICMPIn(ns *NetNS) (net.PacketConn, error) {
	return InNetNS(ns, func() (net.PacketConn, error) { return net.ListenPacket("ip4:icmp", "0.0.0.0") })
}

func (p *Prober) send(period time.Duration) {
	defer p.done.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for seq := uint16(0); ; seq++ {
		for _, a := range p.addrs {
			p.conn.WriteTo(echoRequest(p.id, seq), &net.IPAddr{IP: net.ParseIP(a)})
		}
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

func (p *Prober) receive() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if n < 8 || buf[0] != 0 || binary.BigEndian.Uint16(buf[4:]) != p.id {
			continue // not an echo reply to us
		}
		a := from.(*net.IPAddr).IP.String()
		p.mu.Lock()
		if l, ok := p.last[a]; ok && now.Sub(l) > 0 {
			p.gaps[a] = append(p.gaps[a], ProbeGap{l, now})
		}
		p.last[a] = now
		p.mu.Unlock()
	}
}

// echoRequest is an ICMP echo request with its checksum.
func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	sum = sum>>16 + sum&0xffff
	sum += sum >> 16
	binary.BigEndian.PutUint16(b[2:], ^uint16(sum))
	return b
}

// Longest is addr's longest gap that ended in [from, to] (zero: none).
func (p *Prober) Longest(addr string, from, to time.Time) ProbeGap {
	p.mu.Lock()
	defer p.mu.Unlock()
	var g ProbeGap
	for _, x := range p.gaps[addr] {
		if !x.To.Before(from) && !x.To.After(to) && x.Len() > g.Len() {
			g = x
		}
	}
	return g
}

// Answered reports whether addr answered since t.
func (p *Prober) Answered(addr string, t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last[addr].After(t)
}

// Stop stops probing.
func (p *Prober) Stop() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.conn.Close()
	p.done.Wait()
}

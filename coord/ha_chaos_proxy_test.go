package coord_test

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

// cutProxy stands between one coordinator replica and one etcd member,
// both in namespace ns: it forwards TCP until cut, then drops every byte
// either way while holding the connections open (as a partition that
// loses packets does: the replica's keepalives go unanswered, nothing is
// refused). Mending it closes what it held, so the replica redials.
type cutProxy struct {
	ln     net.Listener
	ns     *testenv.NetNS
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

// listenIn listens on addr inside namespace ns; the socket stays there.
func listenIn(ns *testenv.NetNS, addr string) (net.Listener, error) {
	return testenv.InNetNS(ns, func() (net.Listener, error) { return net.Listen("tcp", addr) })
}

// newCutProxy forwards a free loopback port of ns to target (host:port in ns).
func newCutProxy(t *testing.T, ns *testenv.NetNS, target string) *cutProxy {
	ln, err := listenIn(ns, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy to %s: %v", target, err)
	}
	p := &cutProxy{ln: ln, ns: ns, target: target}
	t.Cleanup(func() { ln.Close(); p.setCut(false) })
	go p.serve()
	return p
}

// URL is the proxy's address as an etcd endpoint.
func (p *cutProxy) URL() string { return fmt.Sprintf("http://%s", p.ln.Addr()) }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.pipe(c)
	}
}

func (p *cutProxy) pipe(c net.Conn) {
	u, err := testenv.DialIn(p.ns, p.target, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	go p.copy(u, c)
	p.copy(c, u)
}

// copy forwards src to dst while not cut; cut, it reads and drops.
func (p *cutProxy) copy(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.isCut() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *cutProxy) isCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// setCut cuts or mends the link; mending drops the connections that lost
// bytes while it was cut.
func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut && !cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
	p.cut = cut
}

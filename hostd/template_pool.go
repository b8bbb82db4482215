package hostd

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MaxTemplatePool bounds a template's pool of standby clones.
const MaxTemplatePool = 64

// clonePools are the host's pools of standby clones, by template: clones
// started ahead of requests (QEMU up, the template's state loaded, the
// vCPUs run, guestd reached and given a placeholder identity) so that a
// request only gives one its own identity. This is Kata's VM cache; the
// pool is bounded, refilled in the background one clone at a time, and
// its clones are processes like any other (their memory counts).
type clonePools struct {
	mu    sync.Mutex
	pools map[string]*clonePool
}

// clonePool is one template's.
type clonePool struct {
	h      *Host
	tmpl   string
	size   int
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{}

	mu    sync.Mutex
	ready []*standby
	next  int // number of the next standby
}

// SetTemplatePool sets how many standby clones of a template this host
// keeps (0: none, the pool's are stopped). Pools live as long as hostd:
// a restarted hostd has none until they are set again.
func (h *Host) SetTemplatePool(name string, size int) error {
	if size < 0 || size > MaxTemplatePool {
		return fmt.Errorf("template %q: pool of %d: 0..%d: %w", name, size, MaxTemplatePool, ErrInvalidSpec)
	}
	if _, err := h.Template(name); err != nil {
		return err
	}
	h.pools.mu.Lock()
	defer h.pools.mu.Unlock()
	if old := h.pools.pools[name]; old != nil {
		if size > 0 {
			old.resize(size)
			return nil
		}
		delete(h.pools.pools, name)
		old.close()
	}
	if size == 0 {
		return nil
	}
	if h.pools.pools == nil {
		h.pools.pools = map[string]*clonePool{}
	}
	p := &clonePool{h: h, tmpl: name, size: size, wake: make(chan struct{}, 1)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	h.pools.pools[name] = p
	h.removeStaleStandbys(name)
	go p.fill()
	h.log.Info("template pool set", "template", name, "size", size)
	return nil
}

// pool is a template's pool, nil if it has none.
func (h *Host) pool(name string) *clonePool {
	h.pools.mu.Lock()
	defer h.pools.mu.Unlock()
	return h.pools.pools[name]
}

// closePool stops a template's pool, if any (its template goes, or
// hostd closes).
func (h *Host) closePool(name string) {
	h.pools.mu.Lock()
	p := h.pools.pools[name]
	delete(h.pools.pools, name)
	h.pools.mu.Unlock()
	if p != nil {
		p.close()
	}
}

// closePools stops every pool: standby clones are hostd's alone and no
// other hostd would adopt them.
func (h *Host) closePools() {
	h.pools.mu.Lock()
	names := make([]string, 0, len(h.pools.pools))
	for n := range h.pools.pools {
		names = append(names, n)
	}
	h.pools.mu.Unlock()
	for _, n := range names {
		h.closePool(n)
	}
}

func (p *clonePool) resize(size int) {
	p.mu.Lock()
	p.size = size
	var extra []*standby
	if len(p.ready) > size {
		extra, p.ready = p.ready[size:], p.ready[:size]
	}
	p.mu.Unlock()
	for _, s := range extra {
		s.stop()
	}
	p.poke()
}

func (p *clonePool) close() {
	p.cancel()
	p.mu.Lock()
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	for _, s := range ready {
		s.stop()
	}
}

func (p *clonePool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take hands out the oldest standby clone still running, nil if none;
// the filler starts another.
func (p *clonePool) take() *standby {
	defer p.poke()
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.ready) > 0 {
		s := p.ready[0]
		p.ready = p.ready[1:]
		select {
		case <-s.proc.Exited():
			go s.stop()
		default:
			return s
		}
	}
	return nil
}

// putBack returns a standby that a refused request took, unchanged.
func (p *clonePool) putBack(s *standby) {
	if p == nil {
		s.stop()
		return
	}
	p.mu.Lock()
	if p.ctx.Err() == nil && len(p.ready) < p.size {
		p.ready, s = append([]*standby{s}, p.ready...), nil
	}
	p.mu.Unlock()
	if s != nil {
		s.stop()
	}
}

// fill keeps the pool full, one standby at a time (each is a QEMU start,
// a state load and the guest's first work: CPU the clones being served
// need too); after a failure it waits before it tries again.
func (p *clonePool) fill() {
	for {
		p.mu.Lock()
		need := len(p.ready) < p.size
		n := p.next
		p.next++
		p.mu.Unlock()
		if need {
			s, err := p.h.startStandby(p.ctx, p.tmpl, n)
			p.mu.Lock()
			if err == nil && p.ctx.Err() == nil {
				p.ready = append(p.ready, s)
				s = nil
			}
			p.mu.Unlock()
			if s != nil {
				s.stop()
			}
			if err == nil {
				continue
			}
			p.h.log.Warn("template pool: standby clone failed", "template", p.tmpl, "err", err)
		}
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		case <-time.After(map[bool]time.Duration{true: 5 * time.Second, false: time.Minute}[need]):
		}
	}
}

// PoolInfo is a template pool's state.
type PoolInfo struct {
	Size int `json:"size"`
	// PIDs are the standby clones' QEMUs.
	PIDs []int `json:"pids"`
}

func (p *clonePool) info() *PoolInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := &PoolInfo{Size: p.size, PIDs: []int{}}
	for _, s := range p.ready {
		in.PIDs = append(in.PIDs, s.proc.PID)
	}
	return in
}

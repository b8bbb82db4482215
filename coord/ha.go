package coord

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/symvirt/symvirt/internal/jsonapi"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ha is a coordinator replica's part in an etcd-backed set: it campaigns
// for leadership; only the leader serves the API and drives operations.
// Its epoch, the create revision of its election key, grows with every
// new leader: it conditions each store write (store_etcd.go) and travels
// with each hostd step, so a deposed leader can neither write nor act.
type ha struct {
	cfg   *EtcdConfig
	store *etcdStore
	id    string // replica id: PREFIX/replicas/ID holds its address
	epoch atomic.Int64
	once  sync.Once  // takeOver runs once per process
	mu    sync.Mutex // held by takeOver: Close waits for it (the scheduler it starts)
	stop  context.CancelFunc
}

// Replica is one coordinator replica as registered in etcd.
type Replica struct {
	ID     string `json:"id"`
	Addr   string `json:"addr"`
	Leader bool   `json:"leader,omitempty"`
}

// HAStatus is the replica set: who leads, since which epoch.
type HAStatus struct {
	Self     string    `json:"self"`
	Leader   string    `json:"leader,omitempty"` // the leader's address
	Epoch    int64     `json:"epoch,omitempty"`
	Replicas []Replica `json:"replicas"`
}

// leading reports whether this replica leads (always, without etcd).
func (c *Coord) leading() bool { return c.ha == nil || c.ha.epoch.Load() > 0 }

// epoch is the fencing token sent with every step (0 without etcd: hostds
// then do not fence).
func (c *Coord) epoch() int64 {
	if c.ha == nil {
		return 0
	}
	return c.ha.epoch.Load()
}

// startHA campaigns in the background; the replica takes over when it wins.
func (c *Coord) startHA(st *etcdStore) {
	host, _ := os.Hostname()
	ctx, cancel := context.WithCancel(context.Background())
	c.ha = &ha{cfg: c.cfg.Etcd, store: st, id: fmt.Sprintf("%s-%d", host, os.Getpid()), stop: cancel}
	go c.campaign(ctx)
}

func (h *ha) prefix() string { return h.cfg.prefix() }

// campaign waits to lead, takes over, and ends the process when its
// session is lost: nothing this replica had in flight may go on, and its
// supervisor restarts it as a follower with no state of the old term.
func (c *Coord) campaign(ctx context.Context) {
	h := c.ha
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(h.store.cli, concurrency.WithTTL(h.cfg.ttlSeconds()),
			concurrency.WithContext(ctx))
		if err != nil {
			c.log.Warn("etcd session not opened; retrying", "err", err)
			time.Sleep(time.Second)
			continue
		}
		if _, err := h.store.cli.Put(ctx, h.prefix()+"/replicas/"+h.id, h.cfg.Advertise,
			clientv3.WithLease(sess.Lease())); err != nil {
			c.log.Warn("replica not registered", "err", err)
		}
		el := concurrency.NewElection(sess, h.prefix()+"/election")
		c.log.Info("campaigning for coordinator leadership", "replica", h.id, "advertise", h.cfg.Advertise)
		if err := el.Campaign(ctx, h.cfg.Advertise); err != nil {
			sess.Close()
			continue
		}
		c.lead(el.Key(), el.Rev())
		select {
		case <-sess.Done():
			c.deposed(el.Rev())
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			el.Resign(rctx)
			cancel()
		}
		return
	}
}

// lead makes this replica the leader of epoch: writes are allowed while
// the election key keeps its revision, and unfinished operations resume.
func (c *Coord) lead(key string, epoch int64) {
	c.ha.store.lead(key, epoch)
	c.ha.epoch.Store(epoch)
	c.log.Info("leading the coordinator replicas", "epoch", epoch, "replica", c.ha.id)
	c.ha.mu.Lock()
	defer c.ha.mu.Unlock()
	c.ha.once.Do(func() {
		if err := c.takeOver(); err != nil {
			c.log.Error("the journal cannot be read: this replica cannot lead", "err", err)
			c.deposed(epoch)
		}
	})
}

// stopHA resigns (Close): another replica takes over without waiting for
// this one's session to run out.
func (c *Coord) stopHA() {
	if c.ha != nil {
		c.ha.stop()
		c.ha.mu.Lock()
		c.ha.mu.Unlock() //nolint:staticcheck // waits for a takeOver under way
	}
}

// deposed: the session ended (etcd unreachable past the TTL, or this
// process was paused that long). No write can succeed any more (the key is
// gone); stop at once.
func (c *Coord) deposed(epoch int64) {
	c.ha.store.lead("", 0)
	c.ha.epoch.Store(0)
	c.log.Error("coordinator leadership lost: stopping now, another replica takes over", "epoch", epoch)
	exit := c.cfg.Exit
	if exit == nil {
		exit = os.Exit
	}
	exit(3)
}

// HA reports the replica set (nil without etcd).
func (c *Coord) HA(ctx context.Context) (*HAStatus, error) {
	if c.ha == nil {
		return nil, nil
	}
	h := c.ha
	st := &HAStatus{Self: h.cfg.Advertise, Replicas: []Replica{}}
	cli := h.store.cli
	lead, err := cli.Get(ctx, h.prefix()+"/election", clientv3.WithFirstCreate()...)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	if len(lead.Kvs) > 0 {
		st.Leader, st.Epoch = string(lead.Kvs[0].Value), lead.Kvs[0].CreateRevision
	}
	reps, err := cli.Get(ctx, h.prefix()+"/replicas/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	for _, kv := range reps.Kvs {
		r := Replica{ID: string(kv.Key[len(h.prefix()+"/replicas/"):]), Addr: string(kv.Value)}
		r.Leader = r.Addr == st.Leader && st.Leader != ""
		st.Replicas = append(st.Replicas, r)
	}
	return st, nil
}

// haGate answers for a follower: GET /v1/replicas is served by every
// replica; anything else is refused with ErrNotLeader naming the leader,
// which the client (replicaClient) follows.
func (c *Coord) haGate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/v1/replicas" {
			st, err := c.HA(r.Context())
			if err != nil {
				codes.WriteError(w, err)
				return
			}
			if st == nil {
				st = &HAStatus{Replicas: []Replica{}} // one coordinator, on bbolt
			}
			jsonapi.WriteJSON(w, st)
			return
		}
		if !c.leading() {
			leader := "none elected yet"
			if st, err := c.HA(r.Context()); err == nil && st.Leader != "" {
				leader = st.Leader
			}
			codes.WriteError(w, fmt.Errorf("%w: this replica is %s; the leader is %s", ErrNotLeader, c.ha.cfg.Advertise, leader))
			return
		}
		next.ServeHTTP(w, r)
	})
}

package coord

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/pki"
)

// Config configures a coordinator.
type Config struct {
	StateDir string
	// CheckpointDir is where hostds write checkpoints; it must be the
	// same path on every host (shared storage) for a restart elsewhere.
	CheckpointDir string
	// Lease bounds how long a VM stays paused without the coordinator.
	Lease           time.Duration
	PrepareTimeout  time.Duration
	StepTimeout     time.Duration
	TransferTimeout time.Duration
	// HostTLS is the client configuration towards hostds (mutual TLS).
	HostTLS *tls.Config
	// Signer is the coordinator certificate's key; it signs the grants
	// that let one hostd hand a VM to another (nil without TLS).
	Signer *pki.Signer
	Logger *slog.Logger
	// CrashAt makes the coordinator exit at once when an operation enters
	// this phase (after journaling it): a deterministic kill -9 for tests.
	CrashAt string
	// StopAt makes the coordinator SIGSTOP itself once, right after
	// journaling this phase and before sending its actions: a paused
	// leader at a known instant for tests (ha_hooks.go).
	StopAt string
	Exit   func(code int)
	// Etcd, when set, keeps the store in etcd and makes this coordinator
	// one replica of several (ha.go); StateDir then holds only the socket.
	Etcd *EtcdConfig
}

// Coord is the coordinator.
type Coord struct {
	cfg   Config
	store Store
	log   *slog.Logger

	mu   sync.Mutex
	busy map[string]string  // job -> op id
	live map[string]*liveOp // op id -> its running operation (opsview.go)
	wg   sync.WaitGroup

	sched scheduler
	ha    *ha // nil: the only coordinator (bbolt)

	clients sync.Map // hostd address -> *hostd.Client
}

// New opens the store and resumes unfinished operations (they finish or
// roll back).
func New(cfg Config) (*Coord, error) {
	if cfg.StateDir == "" || cfg.CheckpointDir == "" {
		return nil, fmt.Errorf("coord: state dir and checkpoint dir are required: %w", ErrInvalid)
	}
	if cfg.Lease == 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Etcd != nil {
		st, err := OpenEtcd(cfg.Etcd)
		if err != nil {
			return nil, err
		}
		c := &Coord{cfg: cfg, store: st, log: cfg.Logger, busy: map[string]string{}}
		c.startHA(st) // it takes over once elected
		return c, nil
	}
	st, err := OpenBolt(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	c := &Coord{cfg: cfg, store: st, log: cfg.Logger, busy: map[string]string{}}
	if err := c.takeOver(); err != nil {
		return nil, err
	}
	return c, nil
}

// takeOver resumes the unfinished operations of the journal and starts the
// scheduler: at start, or when this replica becomes the leader.
func (c *Coord) takeOver() error {
	recs, err := listAll[OpRecord](c.store, bucketOps)
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if rec.Result == nil && rec.Op != nil {
			c.recover(&rec)
		}
	}
	c.startScheduler()
	return nil
}

// recover drives an operation a previous coordinator left unfinished to
// its end (it finishes or rolls back); its job is busy until then.
func (c *Coord) recover(rec *OpRecord) {
	c.log.Warn("resuming an operation left by a previous coordinator", "op", rec.Op.ID, "kind", rec.Op.Kind,
		"job", rec.Op.Job, "phase", rec.Op.Phase)
	c.mu.Lock() // an operation recovered before may be ending already
	c.busy[rec.Op.Job] = rec.Op.ID
	c.mu.Unlock()
	acts := rec.Op.Recover(time.Now())
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.drive(context.Background(), rec, acts, nil)
	}()
}

// Wait waits for background operations (recovered ones) to end.
func (c *Coord) Wait() { c.wg.Wait() }

// Close stops the scheduler and closes the store.
func (c *Coord) Close() error {
	c.stopHA()
	c.stopScheduler()
	return c.store.Close()
}

func newID(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + "-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// client is the hostd client for addr, one per address: its connections
// stay open between steps, so that a step is one round trip, not a new
// TCP connection and mutual-TLS handshake on a host whose cores its VMs'
// streams keep busy (a fence's lift is such a step).
func (c *Coord) client(addr string) *hostd.Client {
	if cl, ok := c.clients.Load(addr); ok {
		return cl.(*hostd.Client)
	}
	cl, _ := c.clients.LoadOrStore(addr, hostd.NewClientTLS(addr, c.cfg.HostTLS))
	return cl.(*hostd.Client)
}

// claim marks a job busy with an operation.
func (c *Coord) claim(job, op string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.busy[job]; ok {
		return fmt.Errorf("job %q: operation %s: %w", job, cur, ErrBusy)
	}
	c.busy[job] = op
	return nil
}

func (c *Coord) release(job string) {
	c.mu.Lock()
	delete(c.busy, job)
	c.mu.Unlock()
}

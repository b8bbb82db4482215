package coord

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// replicaClient talks to whichever of several coordinator replicas leads:
// it asks the one that answered last first, and moves on when a replica
// says it does not lead or cannot be reached (a refused connection: the
// request was not sent, so trying the next replica cannot run it twice).
type replicaClient struct {
	mu      sync.Mutex
	first   int
	clients []*jsonapi.Client
}

func newReplicaClient(addrs string, cfg *tls.Config) *replicaClient {
	rc := &replicaClient{}
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			rc.clients = append(rc.clients, jsonapi.NewClient("coord", a, cfg, codes))
		}
	}
	if len(rc.clients) == 0 {
		rc.clients = append(rc.clients, jsonapi.NewClient("coord", addrs, cfg, codes))
	}
	return rc
}

// try runs fn on each replica in turn (order), until one does not answer
// "not the leader" or "unreachable".
func (rc *replicaClient) try(ctx context.Context, fn func(*jsonapi.Client) error) error {
	var errs []error
	for _, n := range rc.order(ctx) {
		err := fn(rc.clients[n])
		if err == nil || !(errors.Is(err, ErrNotLeader) || notSent(err)) || len(rc.clients) == 1 {
			rc.mu.Lock()
			rc.first = n
			rc.mu.Unlock()
			return err
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// notSent: the connection was never made (the replica is down).
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (rc *replicaClient) Do(ctx context.Context, method, path string, body, out any) error {
	return rc.try(ctx, func(c *jsonapi.Client) error { return c.Do(ctx, method, path, body, out) })
}

func (rc *replicaClient) Stream(ctx context.Context, path string, body, out any, progress func(json.RawMessage)) error {
	return rc.try(ctx, func(c *jsonapi.Client) error { return c.Stream(ctx, path, body, out, progress) })
}

// probeTimeout bounds how long a replica has to say who leads: a paused
// or wedged replica must not hold the CLI.
const probeTimeout = 2 * time.Second

// order is the order to ask the replicas in: with several, all are asked
// at once who leads (GET /v1/replicas); the leader comes first if it
// answered too, then the other replicas that answered, then the silent
// ones only if none answered; the last one that worked goes first among
// equals.
func (rc *replicaClient) order(ctx context.Context) []int {
	rc.mu.Lock()
	first := rc.first
	rc.mu.Unlock()
	n := len(rc.clients)
	if n == 1 {
		return []int{0}
	}
	leaders := make([]string, n)
	var wg sync.WaitGroup
	for i, c := range rc.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			var st HAStatus
			if c.Do(pctx, "GET", "/v1/replicas", nil, &st) == nil {
				leaders[i] = "?" + st.Leader // answered; "?" alone: knows no leader
			}
		}()
	}
	wg.Wait()
	rank := func(i int) int {
		switch {
		case leaders[i] == "":
			return 3 // silent
		case slices.Contains(leaders, "?"+rc.clients[i].Addr()):
			return 0 // named leader by an answering replica, and answers
		case i == first:
			return 1
		}
		return 2
	}
	out := make([]int, n)
	for i := range out {
		out[i] = (first + i) % n
	}
	slices.SortStableFunc(out, func(a, b int) int { return rank(a) - rank(b) })
	if rank(out[0]) < 3 {
		// A silent replica is skipped when another answered: a paused
		// one would hold the request for ever.
		out = slices.DeleteFunc(out, func(i int) bool { return rank(i) == 3 })
	}
	return out
}

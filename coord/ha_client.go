package coord

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"

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

// try runs fn on each replica in turn, from the last one that led, until
// one does not answer "not the leader" or "unreachable".
func (rc *replicaClient) try(fn func(*jsonapi.Client) error) error {
	rc.mu.Lock()
	first := rc.first
	rc.mu.Unlock()
	var errs []error
	for i := range rc.clients {
		n := (first + i) % len(rc.clients)
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
	return rc.try(func(c *jsonapi.Client) error { return c.Do(ctx, method, path, body, out) })
}

func (rc *replicaClient) Stream(ctx context.Context, path string, body, out any, progress func(json.RawMessage)) error {
	return rc.try(func(c *jsonapi.Client) error { return c.Stream(ctx, path, body, out, progress) })
}

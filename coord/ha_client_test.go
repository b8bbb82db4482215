package coord

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// serveUnix serves h on a unix socket in dir; it is closed at cleanup.
func serveUnix(t *testing.T, dir, name string, h http.Handler) string {
	path := filepath.Join(dir, name)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return path
}

// The CLI given three replicas reaches the leader although the first is
// paused (it accepts connections and never answers) and the second is a
// follower: a wedged replica does not hold it, and a follower's
// "not the leader" sends it on. With only followers, the error says so.
func TestReplicaClientFindsTheLeader(t *testing.T) {
	dir := t.TempDir()
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	paused := serveUnix(t, dir, "paused", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-block }))
	var leader string
	follower := serveUnix(t, dir, "follower", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/replicas" {
			jsonapi.WriteJSON(w, HAStatus{Leader: leader})
			return
		}
		codes.WriteError(w, ErrNotLeader)
	}))
	leader = serveUnix(t, dir, "leader", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/replicas" {
			jsonapi.WriteJSON(w, HAStatus{Leader: leader})
			return
		}
		jsonapi.WriteJSON(w, []Host{{Name: "a"}})
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var hosts []Host
	c := NewClient(paused+","+follower+","+leader, nil)
	if err := c.Do(ctx, "GET", "/v1/hosts", nil, &hosts); err != nil || len(hosts) != 1 {
		t.Fatalf("through the replica list: %v %v", err, hosts)
	}
	c = NewClient(paused+","+follower, nil)
	err := c.Do(ctx, "GET", "/v1/hosts", nil, &hosts)
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("with no leader reachable: %v, want ErrNotLeader", err)
	}
}

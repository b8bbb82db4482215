package coord_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testetcd"
)

// TestBenchHAFailover is `make bench`'s failover line: three coordinator
// replicas on a real 3-member etcd cluster; the leader is killed (kill -9)
// and the time until another replica serves the API as leader (the CLI,
// given the three addresses, gets an answer) is measured over 20 trials.
// The new leader resumes the journal's operations as it takes over, before
// it serves, so this bounds the time to its first step.
func TestBenchHAFailover(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	testenv.RequireRoot(t)
	ttl := "1s"
	// etcd makes a lease at least 1.5 election timeouts long: 500 ms
	// lets the session be 1 s (with its defaults, 1 s, a lease is 2 s).
	etcd := testetcd.Start(t, "", 3, testetcd.FreeBase(t, 3), "--election-timeout", "500")
	args := []string{"--etcd", etcd.Endpoints(), "--etcd-insecure-http", "--etcd-ttl", ttl}
	ck := t.TempDir()
	var reps []*testenv.Coord
	var socks []string
	for i := range 3 {
		r := testenv.StartCoordReplica(t, nil, fmt.Sprintf("coord%d", i), ck, nil, args...)
		reps = append(reps, r)
		socks = append(socks, r.Socket())
	}
	all := strings.Join(socks, ",")
	var took []time.Duration
	for trial := range 20 {
		leader, epoch := haLeader(t, all)
		i := slices.Index(socks, leader)
		if i < 0 {
			t.Fatalf("trial %d: leader %q is none of the replicas", trial, leader)
		}
		start := time.Now()
		reps[i].Kill()
		for !haServes(t, all, epoch) {
			if time.Since(start) > 60*time.Second {
				t.Fatalf("trial %d: no new leader after 60s", trial)
			}
			time.Sleep(20 * time.Millisecond)
		}
		took = append(took, time.Since(start))
		reps[i].Start()
	}
	slices.Sort(took)
	benchline.Print(map[string]any{"bench": "coord_failover", "trials": len(took), "etcd_ttl": ttl,
		"failover_median_seconds": took[len(took)/2].Seconds(), "failover_max_seconds": took[len(took)-1].Seconds(),
		"failover_min_seconds": took[0].Seconds()})
}

// haLeader asks the replica list who leads.
func haLeader(t *testing.T, all string) (string, int64) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(testenv.Binary(t), "coord", "status", "--output", "json", "--coord", all).CombinedOutput()
		var st coord.HAStatus
		if err == nil && json.Unmarshal(out, &st) == nil && st.Leader != "" {
			return st.Leader, st.Epoch
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// haServes: a leader of an epoch after old answers the API.
func haServes(t *testing.T, all string, old int64) bool {
	if out, err := exec.Command(testenv.Binary(t), "hosts", "--coord", all).CombinedOutput(); err != nil {
		_ = out
		return false
	}
	_, epoch := haLeader(t, all)
	return epoch > old
}

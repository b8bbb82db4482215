package coord_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testetcd"
)

// TestBenchHAFailoverFirstStep is `make bench`'s failover line measured
// as the issue defines it: three coordinator replicas on a real 3-member
// etcd cluster drive a 2-VM job on real QEMU; a checkpoint starts, the
// leader is killed (kill -9) while it runs, and the time from the kill to
// the new leader's first step (the first hostd to log the new epoch,
// which it does before it runs a step of it) is taken over 20 trials; the
// time to the new leader's first API answer is given too. The session TTL
// is 1 s (etcd makes a lease at least 1.5 election timeouts long: its
// election timeout is 500 ms here).
func TestBenchHAFailoverFirstStep(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	h := &haCluster{}
	h.cluster = newClusterWith(t, clusterOpts{beforeCoord: func(mgmt *testenv.NetNS) []string {
		h.etcd = testetcd.Start(t, mgmt.Name, 3, 23790, "--election-timeout", "500")
		return []string{"--etcd", h.etcd.Endpoints(), "--etcd-insecure-http", "--etcd-ttl", "1s"}
	}})
	h.reps = []*testenv.Coord{h.coord}
	for i := 1; i < 3; i++ {
		h.reps = append(h.reps, testenv.StartCoordReplica(t, h.coord.NS, fmt.Sprintf("coord%d", i), h.ckDir, nil,
			h.coord.Extra...))
	}
	h.coord.Ready = replicaReady(t, h.coord)
	ch := &chaos{t: t, h: h, rng: rand.New(rand.NewPCG(1, 1)), faults: map[string]int{}, ttl: time.Second,
		proxies: make([][]*cutProxy, len(h.reps))}
	ch.syncLeader()
	startJob(t, ch.h.cluster, "")
	for trial := 0; len(ch.firstStep) < 20; trial++ {
		if trial == 60 {
			t.Fatalf("only %d of 60 kills caught a checkpoint in flight", len(ch.firstStep))
		}
		done := make(chan opResult, 1)
		go func() { done <- ch.run([]string{"checkpoint", "jf", "--live=false"}) }()
		time.Sleep(time.Duration(300+ch.rng.IntN(700)) * time.Millisecond)
		ch.inject("kill-leader", done)
		<-done
		ch.heal()
		ch.final() // the recovered checkpoint ends before the next trial
	}
	benchline.Print(map[string]any{"bench": "coord_failover_first_step", "trials": len(ch.firstStep),
		"etcd_ttl": "1s", "first_step_median_seconds": median(ch.firstStep).Seconds(),
		"first_step_max_seconds": slices.Max(ch.firstStep).Seconds(),
		"api_median_seconds":     median(ch.failover).Seconds(), "api_max_seconds": slices.Max(ch.failover).Seconds()})
	logDurations(t, "kill -9 to the new leader's first step", ch.firstStep)
	logDurations(t, "kill -9 to the new leader's API answer", ch.failover)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

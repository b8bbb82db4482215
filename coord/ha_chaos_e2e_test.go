package coord_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testenv"
)

// chaos drives the randomized fault test: operations on one job through
// the replica list while faults hit the coordinator replicas.
type chaos struct {
	t       *testing.T
	h       *haCluster
	rng     *rand.Rand
	proxies [][]*cutProxy // per replica: its links to the etcd members
	hist    []chaosRecord
	faults  map[string]int
	// failover: kill -9 of the leader to another replica answering the
	// API as leader; firstStep: to the new leader's first step at a hostd
	// (when an operation was in flight).
	failover, firstStep []time.Duration
	pendingStep         []pendingStep
	restarts            int // replicas restarted after they stopped
	ttl                 time.Duration
}

// The randomized fault test (issue 18): three coordinator replicas on a
// real 3-member etcd cluster, a 2-VM job on real QEMU across hostd
// namespaces; a seeded random schedule of operations (checkpoint, live or
// not; restart from a complete checkpoint after the job's VMs crash;
// migrate a VM to a free host), sent through the CLI with every replica's
// address, interleaved with faults on the replicas: kill -9 (the leader
// most often) and restart, SIGSTOP past the session TTL then SIGCONT, and
// a partition of a replica from every etcd member (its etcd traffic goes
// through proxies that drop every byte while cut). The history (what each
// CLI call was told) and the final record in the store are checked
// (checkHistory), then every VM must run on exactly one host (every
// hostd asked, QEMU processes counted) where the coordinator says, and a
// sample of the complete checkpoints must restore.
//
// 10 operations by default; 100 with SYMVIRT_TEST_SLOW=1 (make
// test-slow); SYMVIRT_CHAOS_OPS overrides; SYMVIRT_CHAOS_SEED replays a
// schedule.
func TestHACoordChaos(t *testing.T) {
	n := 10
	if os.Getenv("SYMVIRT_TEST_SLOW") == "1" {
		n = 100
	}
	if s := os.Getenv("SYMVIRT_CHAOS_OPS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	seed := time.Now().UnixNano() % 1e9
	if s := os.Getenv("SYMVIRT_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("chaos: %d operations, seed %d (SYMVIRT_CHAOS_SEED=%d replays the schedule)", n, seed, seed)
	ch := &chaos{t: t, h: newHACluster(t), rng: rand.New(rand.NewPCG(uint64(seed), 1)), faults: map[string]int{},
		ttl: 2 * time.Second}
	ch.restartReplicas("2s", true)
	ch.syncLeader()
	startJob(t, ch.h.cluster, "")
	for i := range n {
		ch.step(i)
	}
	ch.heal()
	fin := ch.final()
	t.Logf("chaos: %d operations in the history, %d stored, %d checkpoints; faults %v; %d replica restarts",
		len(ch.hist), len(fin.Ops), len(fin.Checkpoints), ch.faults, ch.restarts)
	logDurations(t, "failover (kill -9 of the leader to a new leader's API answer)", ch.failover)
	logDurations(t, "failover (kill -9 of the leader to the new leader's first step)", ch.firstStep)
	told := map[string]int{}
	for _, r := range ch.hist {
		switch {
		case r.Res == nil:
			told["no answer"]++
		default:
			told[r.Res.Outcome+" "+r.Res.Checkpoint]++
		}
	}
	t.Logf("chaos: what the CLI was told: %v", told)
	if bad := checkHistory(ch.hist, fin); len(bad) > 0 {
		for _, r := range ch.hist {
			t.Logf("history: %+v", r)
		}
		t.Fatalf("the history has %d violations:\n%s", len(bad), strings.Join(bad, "\n"))
	}
	if ch.running() == 0 {
		t.Logf("the last restart rolled back: the job runs nowhere; restarting it")
		ch.restoreSample(fin, 1)
	}
	ch.assertPlacement()
	ch.restoreSample(fin, 1+len(ch.hist)/40)
}

// restartReplicas restarts every replica with session TTL ttl and, if
// proxied, its etcd traffic through its own proxies (so that it alone can
// be cut from etcd).
func (ch *chaos) restartReplicas(ttl string, proxied bool) {
	h := ch.h
	for _, r := range h.reps {
		r.Kill()
	}
	for _, r := range h.reps {
		var ps []*cutProxy
		var eps []string
		for _, m := range h.etcd.Members {
			if !proxied {
				eps = append(eps, m.Client)
				continue
			}
			p := newCutProxy(ch.t, h.coord.NS, strings.TrimPrefix(m.Client, "http://"))
			ps = append(ps, p)
			eps = append(eps, p.URL())
		}
		ch.proxies = append(ch.proxies, ps)
		extra := slices.Clone(r.Extra)
		for _, kv := range [][2]string{{"--etcd", strings.Join(eps, ",")}, {"--etcd-ttl", ttl}} {
			if j := slices.Index(extra, kv[0]); j >= 0 {
				extra[j+1] = kv[1]
			}
		}
		r.Extra = extra
		// The first replica's readiness check is a single coordinator's
		// (it asks what only a leader answers): once restarted it may
		// follow.
		r.Ready = replicaReady(ch.t, r)
		r.Start()
	}
}

// replicaReady: the replica answers "coord status", as every replica
// does, leader or not.
func replicaReady(t *testing.T, r *testenv.Coord) func() error {
	return func() error {
		if _, err := os.Stat(r.Socket()); err != nil {
			return err
		}
		out, err := exec.Command(testenv.Binary(t), "coord", "status", "--coord", r.Socket()).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
}

// leader is the index of the leading replica and its epoch (-1: none
// answers as leader now). The election key names an address; a replica
// restarted there follows until its predecessor's session runs out, so
// the named replica must also serve what only a leader serves.
func (ch *chaos) leader() (int, int64) {
	out, err := ch.h.cliAll("coord", "status", "--output", "json")
	var st coord.HAStatus
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Leader == "" {
		return -1, 0
	}
	for i, r := range ch.h.reps {
		if r.Socket() == st.Leader && !r.Exited() {
			if _, err := r.CLI(ch.t, "hosts"); err != nil {
				return -1, st.Epoch
			}
			return i, st.Epoch
		}
	}
	return -1, st.Epoch
}

// syncLeader waits for a leader and makes it the cluster's coordinator
// (the shared helpers talk to h.coord).
func (ch *chaos) syncLeader() (int, int64) {
	deadline := time.Now().Add(90 * time.Second)
	for {
		if i, epoch := ch.leader(); i >= 0 {
			ch.h.coord = ch.h.reps[i]
			return i, epoch
		}
		if time.Now().After(deadline) {
			ch.t.Fatalf("no leader among the replicas for 90s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// run is one CLI operation with every replica's address.
func (ch *chaos) run(args []string) opResult {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Binary(ch.t), append(args, "--output", "json")...)
	cmd.Env = append(os.Environ(), "SYMVIRT_COORD="+ch.h.all())
	b, err := cmd.CombinedOutput()
	out := string(b)
	var res machine.Result
	if i := strings.Index(out, "{"); i >= 0 {
		json.NewDecoder(strings.NewReader(out[i:])).Decode(&res)
	}
	return opResult{res, out, err}
}

// busy: the operation was refused before it started (another one still
// holds the job, or no replica leads yet): it may be sent again.
func busy(r opResult) bool {
	return r.err != nil && r.res.Op == "" && (strings.Contains(r.out, "in progress") ||
		strings.Contains(r.out, coord.ErrNotLeader.Error()) || strings.Contains(r.out, "still runs"))
}

// step runs one operation, with a fault injected while it runs (or just
// after, when it ended first) for about half of them.
func (ch *chaos) step(seq int) {
	fault := ch.pickFault()
	if seq < len(everyFault) {
		fault = everyFault[seq] // even a short run sees each kind once
	}
	args := ch.pickOp()
	var faults []string // kept when a refused attempt is sent again
	for attempt := 0; ; attempt++ {
		done := make(chan opResult, 1)
		go func() { done <- ch.run(args) }()
		if fault != "" && attempt == 0 {
			time.Sleep(time.Duration(100+ch.rng.IntN(1900)) * time.Millisecond)
			faults = append(faults, ch.inject(fault, done))
		}
		r := <-done
		ch.heal()
		if busy(r) && attempt < 60 {
			time.Sleep(time.Second)
			continue
		}
		rec := chaosRecord{Seq: seq, Args: args, Faults: faults}
		if r.res.Op != "" {
			rec.Res = &r.res
		}
		if r.err != nil {
			rec.Err = fmt.Sprintf("%v: %s", r.err, tailStr(r.out, 300))
		}
		ch.t.Logf("#%d %s (faults %v): %s %s %s", seq, strings.Join(args, " "), rec.Faults, r.res.Outcome,
			r.res.Checkpoint, firstLine(rec.Err))
		ch.hist = append(ch.hist, rec)
		return
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

var everyFault = []string{"kill-leader", "partition-leader", "pause-leader", "kill-follower", "pause-follower"}

// pickFault: none half the time; kill -9 of the leader most often.
func (ch *chaos) pickFault() string {
	switch x := ch.rng.IntN(100); {
	case x < 50:
		return ""
	case x < 72:
		return "kill-leader"
	case x < 78:
		return "kill-follower"
	case x < 88:
		return "pause-leader"
	case x < 91:
		return "pause-follower"
	default:
		return "partition-leader"
	}
}

// pickOp: a checkpoint (live or not), a restart from a complete
// checkpoint (the job's VMs crash first: nothing of a job may run when it
// restarts) or a migration of a VM to a host none of the job's VMs is on.
func (ch *chaos) pickOp() []string {
	x := ch.rng.IntN(100)
	running := ch.running()
	if x < 25 || running < 2 {
		// A job whose restart rolled back runs nowhere: it restarts.
		if cks := ch.complete(); len(cks) > 0 {
			ck := cks[ch.rng.IntN(len(cks))]
			if running > 0 {
				ch.h.killAll("jf")
			}
			return []string{"restart", "jf", "--checkpoint", ck}
		}
	}
	if x >= 25 && x < 55 {
		where := ch.h.where("jf")
		vm := []string{"vm1", "vm2"}[ch.rng.IntN(2)]
		for _, host := range ch.h.names {
			if host != where["vm1"] && host != where["vm2"] {
				return []string{"migrate", vm, "--to", host}
			}
		}
	}
	return []string{"checkpoint", "jf", "--live=" + strconv.FormatBool(ch.rng.IntN(2) == 0)}
}

// complete lists the job's complete checkpoints.
func (ch *chaos) complete() []string {
	var ids []string
	for _, ck := range ch.checkpoints() {
		if ck.Job == "jf" && ck.Status == machine.CheckpointComplete {
			ids = append(ids, ck.ID)
		}
	}
	return ids
}

func (ch *chaos) checkpoints() []coord.Checkpoint {
	ch.syncLeader()
	out, err := ch.h.cliAll("checkpoints", "list", "--output", "json")
	var cks []coord.Checkpoint
	if err != nil || json.Unmarshal([]byte(out), &cks) != nil {
		ch.t.Fatalf("checkpoints list: %v\n%s", err, out)
	}
	return cks
}

func logDurations(t *testing.T, what string, ds []time.Duration) {
	if len(ds) == 0 {
		t.Logf("%s: no sample", what)
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	t.Logf("%s over %d kills: median %v, max %v, min %v", what, len(s), s[len(s)/2], s[len(s)-1], s[0])
}

// ckFiles counts a checkpoint's VM directories.
func (ch *chaos) ckFiles(id string) int {
	files, _ := os.ReadDir(filepath.Join(ch.h.ckDir, id))
	return len(files)
}

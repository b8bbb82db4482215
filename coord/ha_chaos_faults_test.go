package coord_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testenv"
)

// inject applies one fault to a replica (the leader, or a follower) and
// returns what it did. done is the operation in flight (it may have
// ended already).
func (ch *chaos) inject(fault string, done <-chan opResult) string {
	li, epoch := ch.syncLeader()
	target := li
	if strings.HasSuffix(fault, "follower") {
		target = (li + 1 + ch.rng.IntN(2)) % len(ch.h.reps)
	}
	r := ch.h.reps[target]
	inFlight := len(done) == 0
	ch.faults[fault]++
	switch fault {
	case "kill-leader", "kill-follower":
		killed := time.Now()
		r.Kill()
		if target == li {
			ch.measureFailover(killed, epoch, inFlight)
		}
		r.Start()
	case "pause-leader", "pause-follower":
		r.Signal(syscall.SIGSTOP)
		time.Sleep(ch.ttl + 1500*time.Millisecond)
		r.Signal(syscall.SIGCONT)
	case "partition-leader":
		for _, p := range ch.proxies[target] {
			p.setCut(true)
		}
		time.Sleep(ch.ttl + 2*time.Second)
		for _, p := range ch.proxies[target] {
			p.setCut(false)
		}
	}
	return fmt.Sprintf("%s %s (epoch %d, op in flight %v)", fault, r.Name, epoch, inFlight)
}

// measureFailover waits for a leader of a newer epoch to answer; if an
// operation was in flight, the new leader's first step (the hostd's log of
// its epoch) is timed too.
func (ch *chaos) measureFailover(killed time.Time, old int64, inFlight bool) {
	deadline := killed.Add(60 * time.Second)
	for {
		if i, epoch := ch.leader(); i >= 0 && epoch > old {
			ch.failover = append(ch.failover, time.Since(killed))
			if inFlight {
				ch.pendingStep = append(ch.pendingStep, pendingStep{killed, epoch})
			}
			return
		}
		if time.Now().After(deadline) {
			ch.t.Fatalf("no new leader 60s after the leader (epoch %d) was killed", old)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pendingStep is a failover whose first step is looked up in the hostd
// logs once the operation ended.
type pendingStep struct {
	killed time.Time
	epoch  int64
}

// firstSteps resolves the pending failovers: the earliest hostd log of
// each new epoch.
func (ch *chaos) firstSteps() {
	for _, p := range ch.pendingStep {
		var first time.Time
		for _, hd := range ch.h.hosts {
			sc := bufio.NewScanner(strings.NewReader(hd.Logs()))
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var l struct {
					Time  time.Time `json:"time"`
					Msg   string    `json:"msg"`
					Epoch int64     `json:"epoch"`
				}
				if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "new coordinator epoch" && l.Epoch == p.epoch &&
					(first.IsZero() || l.Time.Before(first)) {
					first = l.Time
				}
			}
		}
		if !first.IsZero() {
			ch.firstStep = append(ch.firstStep, first.Sub(p.killed))
		}
	}
	ch.pendingStep = nil
}

// heal wakes every paused replica, mends every cut link, lets a deposed
// leader stop on its own, restarts every replica that stopped, and waits
// for a leader.
func (ch *chaos) heal() {
	for i, r := range ch.h.reps {
		r.Signal(syscall.SIGCONT)
		for _, p := range ch.proxies[i] {
			p.setCut(false)
		}
	}
	// A replica that lost its session exits a moment after it notices.
	time.Sleep(500 * time.Millisecond)
	for _, r := range ch.h.reps {
		if r.Exited() {
			ch.restarts++
			r.Start()
		}
	}
	ch.syncLeader()
	ch.firstSteps()
}

// final is the store's record once no operation runs.
func (ch *chaos) final() chaosFinal {
	deadline := time.Now().Add(120 * time.Second)
	for {
		ch.syncLeader()
		out, err := ch.h.cliAll("ops", "--last", "0", "--output", "json")
		var ops []coord.OpView
		if err != nil || json.Unmarshal([]byte(out), &ops) != nil {
			ch.t.Fatalf("ops: %v\n%s", err, out)
		}
		if !slices.ContainsFunc(ops, func(o coord.OpView) bool { return o.Running }) {
			return chaosFinal{Ops: ops, Checkpoints: ch.checkpoints(), Files: ch.ckFiles}
		}
		if time.Now().After(deadline) {
			ch.t.Fatalf("an operation still runs 120s after the last fault:\n%s", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// running counts the job's VMs that run where the coordinator says.
func (ch *chaos) running() int {
	ch.syncLeader()
	n := 0
	for vm, host := range ch.h.where("jf") {
		st, err := ch.h.hosts[host].Client().Status(ctxT(ch.t, 10*time.Second), vm)
		if err == nil && st.State == "running" {
			n++
		}
	}
	return n
}

// assertPlacement: every hostd is asked for its VMs and the QEMU
// processes of each VM are counted; each of the job's VMs runs on
// exactly one host, the one the coordinator names, with one QEMU, and is
// nowhere else in any state but stopped.
func (ch *chaos) assertPlacement() {
	t := ch.t
	where := ch.h.where("jf")
	for _, vm := range []string{"vm1", "vm2"} {
		var running, present, qemus []string
		for name, hd := range ch.h.hosts {
			vms, err := hd.Client().List(ctxT(t, 10*time.Second))
			if err != nil {
				t.Fatalf("host %s: %v", name, err)
			}
			for _, v := range vms {
				switch {
				case v.Name == vm && v.State == "running":
					running = append(running, name)
				case v.Name == vm && v.State != "stopped":
					present = append(present, name+":"+v.State)
				}
			}
			for range qemuPIDs(hd.Layout().VM(vm) + "/") {
				qemus = append(qemus, name)
			}
		}
		if len(running) != 1 || running[0] != where[vm] || len(present) != 0 || !slices.Equal(qemus, running) {
			t.Fatalf("%s: running on %v, present on %v, QEMUs on %v; the coordinator says %s", vm, running, present,
				qemus, where[vm])
		}
	}
	t.Logf("placement: %v, one QEMU each", where)
}

// qemuPIDs are the QEMU processes whose command line names dir.
func qemuPIDs(dir string) []int {
	var out []int
	for _, pid := range testenv.PIDsUnder(dir) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.HasPrefix(string(comm), "qemu") {
			out = append(out, pid)
		}
	}
	return out
}

// restoreSample restarts the job from a few of its complete checkpoints,
// chosen at random, with no fault: each must restore, and the VMs run once.
func (ch *chaos) restoreSample(fin chaosFinal, k int) {
	var ids []string
	for _, ck := range fin.Checkpoints {
		if ck.Job == "jf" && ck.Status == machine.CheckpointComplete {
			ids = append(ids, ck.ID)
		}
	}
	ch.rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	k = min(len(ids), k)
	for _, id := range ids[:k] {
		ch.syncLeader()
		ch.h.killAll("jf")
		r := ch.run([]string{"restart", "jf", "--checkpoint", id})
		if r.err != nil || r.res.Outcome != machine.OutcomeRestored {
			ch.t.Fatalf("complete checkpoint %s does not restore: %v\n%s", id, r.err, r.out)
		}
		ch.assertPlacement()
		ch.t.Logf("complete checkpoint %s restored", id)
	}
}

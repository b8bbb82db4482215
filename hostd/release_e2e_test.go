package hostd_test

import (
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// A coordinator migrates a VM (detach, stop, migrate, resume at the
// destination) and vanishes before it kills the source copy: when the
// source's lease runs out, its release asks the destination to drop its
// copy, hears that the destination runs the VM, and kills the source's
// QEMU. The VM runs once, at the destination.
func TestReleaseKillsSourceTheDestinationRuns(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:01")
	ctx := ctxT(t, 4*time.Minute)
	sc := src.Client()
	if _, err := sc.Create(ctx, guestSpec(t, "rl1", "nic"), true); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, serialLog(src, "rl1"), 3, 90*time.Second)
	pid := mustStatus(t, sc, "rl1").PID

	const op, lease = "op-gone", 3 * time.Second
	vanish := renewLeases(ctx, op, lease, src, dst)
	s, d := stepper{t, src, op, "rl1"}, stepper{t, dst, op, "rl1"}
	for _, kind := range []string{hostd.StepDetach, hostd.StepStop} {
		req := s.req(kind, 1)
		req.Lease = lease
		s.ok(req)
	}
	mig := s.req(hostd.StepMigrate, 1)
	mig.Lease, mig.Migrate = lease, &hostd.MigrateArgs{Dest: dst.Addr()}
	s.ok(mig)
	resume := d.req(hostd.StepResume, 1)
	resume.Lease, resume.Resume = lease, &hostd.ResumeArgs{Outcome: "migrated"}
	d.ok(resume)
	vanish()

	deadline := time.Now().Add(time.Minute)
	for {
		_, err := sc.Status(ctx, "rl1")
		if errors.Is(err, hostd.ErrNotFound) && syscall.Kill(pid, 0) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the source copy is still there after its lease ran out: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := mustStatus(t, dst.Client(), "rl1"); st.State != "running" {
		t.Fatalf("destination after the release: %+v", st)
	}
	n := counters(serialLog(dst, "rl1"))
	waitCounter(t, serialLog(dst, "rl1"), n[len(n)-1]+2, 30*time.Second)
	noJournals(t, src)
	// The release's own verdict: the VM moved (not stranded, not aborted).
	if !regexp.MustCompile(`"msg":"vm released".*"outcome":"migrated"`).MatchString(src.Logs()) {
		t.Fatalf("no release of rl1 with outcome migrated in the source's log")
	}
}

// A destination's incoming copy that nobody resumes (its coordinator
// vanished before the migration was sent) is killed when its lease runs
// out: it must never run.
func TestReleaseKillsUnresumedIncoming(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 2*time.Minute)
	req := hostd.IncomingRequest{Spec: guestSpec(t, "ri1", ""), Op: "op-gone", Lease: time.Second}
	if _, err := c.Incoming(ctx, req); err != nil {
		t.Fatal(err)
	}
	pid := mustStatus(t, c, "ri1").PID
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := c.Status(ctx, "ri1")
		if errors.Is(err, hostd.ErrNotFound) && syscall.Kill(pid, 0) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the incoming copy is still there after its lease ran out: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	noJournals(t, h)
	if !regexp.MustCompile(`"msg":"vm released".*"outcome":"aborted"`).MatchString(h.Logs()) {
		t.Fatalf("no release of ri1 with outcome aborted in hostd's log")
	}
}

// renewLeases renews op's leases on hosts, as its coordinator would, until
// the returned function is called (the coordinator vanishes).
func renewLeases(ctx context.Context, op string, lease time.Duration, hosts ...*testenv.Hostd) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			for _, h := range hosts {
				h.Client().RenewLeases(ctx, op, lease, 0)
			}
			select {
			case <-ctx.Done():
			case <-time.After(lease / 4):
			}
		}
	}()
	return func() { cancel(); <-done }
}

// noJournals: every direct operation of h is over (its journal removed).
func noJournals(t *testing.T, h *testenv.Hostd) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ops, _ := filepath.Glob(filepath.Join(h.StateDir, "ops", "*"))
		if len(ops) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("operation journals left: %v", ops)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A hostd killed in the middle of a release (right after its attach) is
// replaced by one that finishes it from its journal: the VM a vanished
// coordinator left detached and paused runs again with its devices.
func TestReleaseFinishedAfterHostdKill(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", onePT)
	c := h.Client()
	ctx := ctxT(t, 4*time.Minute)
	if _, err := c.Create(ctx, guestSpec(t, "rk1", "nic"), true); err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "rk1")
	waitPresent(t, c, "rk1", "pt0")
	waitCounter(t, log, 3, 90*time.Second)
	h.Kill()
	h.Env = []string{"SYMVIRT_HOSTD_CRASH_AT=release:attach"}
	h.Start()

	s := stepper{t, h, "op-gone", "rk1"}
	for _, kind := range []string{hostd.StepDetach, hostd.StepStop} {
		req := s.req(kind, 1)
		req.Lease = time.Second
		s.ok(req)
	}
	deadline := time.Now().Add(time.Minute)
	for !h.Exited() {
		if time.Now().After(deadline) {
			t.Fatal("hostd did not reach its crash point in the release")
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.Env = nil
	h.Start()
	deadline = time.Now().Add(time.Minute)
	for {
		st := mustStatus(t, c, "rk1")
		if st.State == "running" && len(st.Detached) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart: state %s detached %v", st.State, st.Detached)
		}
		time.Sleep(200 * time.Millisecond)
	}
	assertRunningWith(t, c, "rk1", "pt0", log)
	noJournals(t, h)
}

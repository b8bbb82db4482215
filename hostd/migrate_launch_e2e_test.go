package hostd_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
)

// A migration's destination QEMU starts while the source's guest unplugs
// its passthrough NIC (the Launch step beside the Detach), not after it:
// the user waits for the longer of the two.
func TestMigrateLaunchesDestinationDuringDetach(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:01")
	ctx := ctxT(t, 4*time.Minute)
	if _, err := src.Client().Create(ctx, guestSpec(t, "ml1", "nic"), true); err != nil {
		t.Fatal(err)
	}
	waitCounter(t, serialLog(src, "ml1"), 3, 90*time.Second)
	if _, err := src.Client().Migrate(ctx, "ml1", hostd.MigrateOptions{To: dst.Addr()}, nil); err != nil {
		t.Fatal(err)
	}
	detach, launch := stepSpan(t, src.Logs(), "detach"), stepSpan(t, src.Logs(), "launch")
	if !detach.ok || !launch.ok {
		t.Fatalf("detach %+v, launch %+v", detach, launch)
	}
	if !launch.start.Before(detach.end) {
		t.Fatalf("the destination was launched at %s, after the detach ended at %s", launch.start, detach.end)
	}
	if st := mustStatus(t, dst.Client(), "ml1"); st.State != "running" {
		t.Fatalf("destination: %+v", st)
	}
}

// The destination cannot start the VM (no NIC in its pool) while the
// source detaches: the operation rolls back, the destination holds
// nothing, and the source runs on with its NIC.
func TestMigrateLaunchFailsDuringDetach(t *testing.T) {
	src, dst := twoHosts(t, "")
	ctx := ctxT(t, 4*time.Minute)
	c := src.Client()
	if _, err := c.Create(ctx, guestSpec(t, "ml2", "nic"), true); err != nil {
		t.Fatal(err)
	}
	slog := serialLog(src, "ml2")
	waitCounter(t, slog, 3, 90*time.Second)
	if _, err := c.Migrate(ctx, "ml2", hostd.MigrateOptions{To: dst.Addr()}, nil); !errors.Is(err, hostd.ErrNoDevice) {
		t.Fatalf("migrate to a host without devices: %v, want ErrNoDevice", err)
	}
	assertRunningWith(t, c, "ml2", "pt0", slog)
	detach, launch := stepSpan(t, src.Logs(), "detach"), stepSpan(t, src.Logs(), "launch")
	if launch.ok || !launch.start.Before(detach.end) {
		t.Fatalf("launch %+v beside detach %+v", launch, detach)
	}
	if attach := stepSpan(t, src.Logs(), "attach"); !attach.ok {
		t.Fatalf("devices not re-attached: %+v", attach)
	}
	if _, err := dst.Client().Status(ctx, "ml2"); !errors.Is(err, hostd.ErrNotFound) {
		t.Fatalf("destination still has the vm: %v", err)
	}
}

// span is one step as hostd's log records it.
type span struct {
	start, end time.Time
	ok         bool
}

// stepSpan finds the last step of kind in a hostd's JSON log.
func stepSpan(t *testing.T, logs, kind string) span {
	t.Helper()
	var found *span
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r struct {
			Time time.Time     `json:"time"`
			Msg  string        `json:"msg"`
			Kind string        `json:"kind"`
			OK   bool          `json:"ok"`
			Took time.Duration `json:"took"`
		}
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Msg != "step" || r.Kind != kind {
			continue
		}
		found = &span{start: r.Time.Add(-r.Took), end: r.Time, ok: r.OK}
	}
	if found == nil {
		t.Fatalf("no %s step in the log", kind)
	}
	return *found
}

// The coordinator vanishes right after a Launch (the source detached, the
// destination holds the launched, empty copy under the operation's
// lease): when the lease runs out the destination kills its copy and the
// source gets its NIC back and runs on. A Launch that reaches the
// destination after its operation's CancelMigrate ran there is refused.
func TestLaunchedCopyDroppedWithoutCoordinator(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:01")
	ctx := ctxT(t, 4*time.Minute)
	sc := src.Client()
	if _, err := sc.Create(ctx, guestSpec(t, "ml3", "nic"), true); err != nil {
		t.Fatal(err)
	}
	slog := serialLog(src, "ml3")
	waitCounter(t, slog, 3, 90*time.Second)

	const op, lease = "op-launch-gone", 3 * time.Second
	vanish := renewLeases(ctx, op, lease, src, dst)
	s, d := stepper{t, src, op, "ml3"}, stepper{t, dst, op, "ml3"}
	detach := s.req(hostd.StepDetach, 1)
	detach.Lease = lease
	s.ok(detach)
	launch := s.req(hostd.StepLaunch, 1)
	launch.Lease, launch.Migrate = lease, &hostd.MigrateArgs{Dest: dst.Addr()}
	s.ok(launch)
	if st := mustStatus(t, dst.Client(), "ml3"); st.State == "running" {
		t.Fatalf("the launched copy runs: %+v", st)
	}
	vanish()

	deadline := time.Now().Add(time.Minute)
	for {
		_, err := dst.Client().Status(ctx, "ml3")
		if errors.Is(err, hostd.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the launched copy is still at the destination after its lease ran out: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	assertRunningWith(t, sc, "ml3", "pt0", slog)

	// Another operation's CancelMigrate ran at the destination (its
	// Launch was late): that Launch starts nothing there.
	s, d = stepper{t, src, op + "-late", "ml3"}, stepper{t, dst, op + "-late", "ml3"}
	d.ok(d.req(hostd.StepCancelMigrate, 1))
	late := s.req(hostd.StepLaunch, 1)
	late.Lease, late.Migrate = lease, &hostd.MigrateArgs{Dest: dst.Addr()}
	if res := s.send(late); res.OK {
		t.Fatalf("a launch after its operation's cancel at the destination succeeded")
	}
	if _, err := dst.Client().Status(ctx, "ml3"); !errors.Is(err, hostd.ErrNotFound) {
		t.Fatalf("the destination holds a copy after a refused launch: %v", err)
	}
}

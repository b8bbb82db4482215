package hostd_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testguest"
)

// On a QEMU with switchover-ack (8.1 and later) a precopy's arm step
// copies the VM's RAM once and holds the copy at its switchover: the guest
// runs and answers all along, and no point is taken before the point
// step. A hold given up (the operation aborted) leaves the VM running and
// no file behind, and the next live checkpoint, held and released, is
// whole and restores the guest, the return path's commands in its stream
// included.
func TestPrecopyHeldFromArmToPoint(t *testing.T) {
	major, _, _ := strings.Cut(testguest.QemuVersion(t), ".")
	if n, _ := strconv.Atoi(major); n < 9 {
		t.Skip("QEMU " + testguest.QemuVersion(t) + " has no switchover-ack: its live mode is snapshot, and a precopy is copied whole at the point")
	}
	v := startHoldVM(t, "pc1")
	held := `"msg":"live checkpoint copy held at its switchover","vm":"pc1"`
	s := v.op(t, "op-abort", "pc1")
	s.ok(s.withDir(hostd.StepArm))
	if !strings.Contains(v.h.Logs(), held) {
		t.Fatalf("the arm step did not hold a copy:\n%s", v.h.Logs())
	}
	armed := time.Now()
	time.Sleep(1500 * time.Millisecond)
	if g := v.out.Longest(holdAddr, armed, time.Now()); !v.out.Answered(holdAddr, armed.Add(200*time.Millisecond)) || g.Len() > time.Second {
		t.Fatalf("the guest did not answer while its copy was held (longest gap %v)", g.Len())
	}
	if strings.Contains(v.h.Logs(), `"msg":"snapshot point taken"`) {
		t.Fatal("a point was taken before the point step")
	}
	abort := s.req(hostd.StepResume, 1)
	abort.Resume = &hostd.ResumeArgs{Outcome: "aborted"}
	s.ok(abort)
	if _, err := os.Stat(s.dir); !os.IsNotExist(err) {
		t.Fatalf("the aborted copy's directory is still there: %v", err)
	}
	aborted := time.Now()
	waitFor(t, "the guest answers after the abort", 30*time.Second, func() bool {
		return v.out.Answered(holdAddr, aborted)
	})

	next := v.op(t, "op-next", "pc1")
	next.armAndFence()
	if strings.Count(v.h.Logs(), held) != 2 {
		t.Fatal("the next arm step did not hold its copy")
	}
	next.pointAndResume()
	if _, err := hostd.VerifyCheckpoint(next.dir); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 2*time.Minute)
	c := v.h.Client()
	if _, err := c.Stop(ctx, "pc1", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Restore(ctx, hostd.RestoreOptions{Dir: next.dir}, nil); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	waitFor(t, "the restored guest answers", 60*time.Second, func() bool {
		return v.out.Answered(holdAddr, restored)
	})
}

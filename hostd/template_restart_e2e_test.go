package hostd_test

import (
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testenv"
)

// TestStandbyCloneSurvivesHostdRestart: a clone taken from a template's
// pool runs a QEMU started in the pool's directory; a hostd killed and
// started again still adopts it (and can stop it), and kills the standby
// clones the killed hostd left in the pool.
func TestStandbyCloneSurvivesHostdRestart(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 5*time.Minute)
	if _, err := c.CreateTemplate(ctx, "small", templateGuest(t, "small")); err != nil {
		t.Fatal(err)
	}
	if err := c.SetTemplatePool(ctx, "small", 1); err != nil {
		t.Fatal(err)
	}
	waitPool(t, c, 1)
	res, err := c.Clone(ctx, hostd.CloneRequest{Template: "small", Name: "c0"})
	if err != nil || !res.Standby {
		t.Fatalf("clone from the pool: %+v %v", res, err)
	}
	left := waitPool(t, c, 1)
	restartHostd(h)
	c = h.Client()
	info, err := c.Status(ctx, "c0")
	if err != nil || info.State != "running" || info.PID != res.PID {
		t.Fatalf("clone after hostd restart: %+v %v; want running, pid %d", info, err, res.PID)
	}
	for _, pid := range left {
		if !goneSoon(pid) {
			t.Errorf("standby clone pid %d left by the killed hostd still runs", pid)
		}
	}
	if _, err := c.Stop(ctx, "c0", 0); err != nil {
		t.Fatal(err)
	}
	if !goneSoon(res.PID) {
		t.Errorf("clone's QEMU pid %d runs after stop", res.PID)
	}
}

// goneSoon: pid is gone (or a zombie) within 10 s; a SIGKILL is not
// instant.
func goneSoon(pid int) bool {
	for range 100 {
		if !qemu.Alive(pid) {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

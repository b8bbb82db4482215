package hostd_test

import (
	"os"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// powerHook makes a clone's guest reboot (a clone named r...) or power
// off (p...) when a drill's PREPARE runs it: through the kernel
// (sysrq b and o, which `reboot -f` and `poweroff -f` come to), in a
// session of its own, once the drill's round is over in guestd (hook
// status idle) and a second more for its DONE to reach hostd: a guest gone
// before it answered would fail the drill, not reboot after it.
const powerHook = `#!/bin/sh
[ "$1" = prepare ] || exit 0
case "$(hostname)" in
r*) sysrq=b ;;
p*) sysrq=o ;;
*) exit 0 ;;
esac
setsid sh -c "sleep 1; while ! symvirt hook status | grep -qx idle; do sleep 0.2; done; sleep 1; echo $sysrq >/proc/sysrq-trigger" </dev/null >/dev/null 2>&1 &
exit 0
`

// TestCloneGuestReboot: a clone's QEMU holds a placeholder kernel, not
// the guest's; a guest that reboots still comes back, booted from the
// clone's spec, guestd ready with the clone's hostname, machine-id and
// MAC and a new boot_id, twice over (the second reboot is in a QEMU that
// has the real kernel). A clone whose guest powers off stays off.
func TestCloneGuestReboot(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 15*time.Minute)
	spec := templateGuest(t, "small")
	spec.Initrd = testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/hooks.d/50-clone-state": {Mode: 0o755, Data: []byte(cloneHook)},
		"/etc/symvirt/hooks.d/60-power":       {Mode: 0o755, Data: []byte(powerHook)}})
	if _, err := c.CreateTemplate(ctx, "small", spec); err != nil {
		t.Fatal(err)
	}
	if err := c.SetTemplatePool(ctx, "small", 1); err != nil {
		t.Fatal(err)
	}
	waitPool(t, c, 1)
	r0, err := c.Clone(ctx, hostd.CloneRequest{Template: "small", Name: "r0"})
	if err != nil {
		t.Fatal(err)
	}
	p0, err := c.Clone(ctx, hostd.CloneRequest{Template: "small", Name: "p0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("r0 from the pool: %v; p0 from the pool: %v", r0.Standby, p0.Standby)
	first := cloneStates(t, h, "r0", 1, time.Minute)[0]
	pid := r0.PID
	for boot := 2; boot <= 3; boot++ {
		if _, err := c.Drill(ctx, "r0"); err != nil {
			t.Fatalf("drill (the reboot hook): %v", err)
		}
		st := cloneStatesWhileUp(t, h, "r0", boot)
		now := st[boot-1]
		if now[0] != first[0] || now[1] != first[1] || now[2] != first[2] || now[2] != r0.MACs["net0"] {
			t.Errorf("r0 after reboot %d: hostname, machine-id, MAC %v; before %v (MAC given %s)", boot-1, now[:3], first[:3], r0.MACs["net0"])
		}
		for _, before := range st[:boot-1] {
			if now[3] == before[3] {
				t.Errorf("r0 after reboot %d: boot_id %s, as before", boot-1, now[3])
			}
		}
		info, err := c.Status(ctx, "r0")
		if err != nil || info.State != "running" {
			t.Fatalf("r0 after reboot %d: %+v %v", boot-1, info, err)
		}
		t.Logf("r0 boot %d: %v, qemu pid %d (was %d)", boot, now, info.PID, pid)
		pid = info.PID
	}
	cloneStaysOff(t, c, p0)
}

// cloneStates waits until the clone's console shows n clone-state lines
// (one per boot: the clone hook runs when guestd takes the identity) and
// returns them: hostname, machine-id, MAC, boot_id, random bytes.
func cloneStates(t *testing.T, h *testenv.Hostd, vm string, n int, timeout time.Duration) [][]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(serialLog(h, vm))
		ms := cloneStateRE.FindAllStringSubmatch(string(data), -1)
		if len(ms) >= n {
			var out [][]string
			for _, m := range ms {
				out = append(out, m[1:])
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d clone-state lines on its console within %s; want %d", vm, len(ms), timeout, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cloneStatesWhileUp is cloneStates for a clone that is rebooting: it
// fails once the clone has been stopped for 30 s (a reboot's restart
// takes well under that), not at the end of a boot's time.
func cloneStatesWhileUp(t *testing.T, h *testenv.Hostd, vm string, n int) [][]string {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	var down time.Time
	for {
		data, _ := os.ReadFile(serialLog(h, vm))
		if len(cloneStateRE.FindAllString(string(data), -1)) >= n {
			return cloneStates(t, h, vm, n, 0)
		}
		info, err := h.Client().Status(ctxT(t, time.Minute), vm)
		switch {
		case err == nil && info.State == "running":
			down = time.Time{}
		case down.IsZero():
			down = time.Now()
		case time.Since(down) > 30*time.Second:
			t.Fatalf("%s stays stopped after its guest rebooted: %+v %v", vm, info, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no clone-state line for boot %d within 4 minutes", vm, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cloneStaysOff: a clone whose guest powers off is stopped, and still
// is a while later.
func cloneStaysOff(t *testing.T, c *hostd.Client, p0 hostd.CloneResult) {
	ctx := ctxT(t, 3*time.Minute)
	if _, err := c.Drill(ctx, "p0"); err != nil {
		t.Fatalf("drill (the power-off hook): %v", err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !goneSoon(p0.PID) {
		if time.Now().After(deadline) {
			t.Fatalf("p0's QEMU pid %d still runs after its guest powered off", p0.PID)
		}
	}
	time.Sleep(5 * time.Second) // what a reboot would take to start
	info, err := c.Status(ctx, "p0")
	if err != nil || info.State == "running" || info.PID != 0 {
		t.Fatalf("p0 after its guest powered off: %+v %v; want stopped", info, err)
	}
}

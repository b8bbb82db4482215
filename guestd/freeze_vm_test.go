package guestd

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestFreezeInVM boots the test guest (Debian's cloud kernel, 6.1; its init
// mounts cgroup2 at /sys/fs/cgroup) with this package's test binary inside,
// and checks there:
//   - the freezer and freeze-round tests, on the guest's kernel and on the
//     hierarchy its init mounted (found in mountinfo, not mounted by us);
//   - guestd with the real eBPF tracker on virtio-serial, every process of
//     the guest a candidate: a PREPARE(migrate, freeze) freezes a shell loop
//     counting on the console, while a process connected to the outside
//     (the host, over QEMU's user-mode network) keeps counting; RESUME
//     thaws the loop.
//
// Skipped when the guest is not built or qemu is missing (see testguest).
func TestFreezeInVM(t *testing.T) {
	if inGuest {
		t.Skip("inside the guest already")
	}
	if testing.Short() {
		t.Skip("boots a VM")
	}
	kernel, _ := testguest.Paths(t)

	// The outside peer: QEMU's user-mode network takes the guest's
	// connections to 10.0.2.2 to the host's loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	dir := shortDir(t)
	bin := guestTestBinary(t, dir)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/bin/guestd.test":        {Src: bin, Mode: 0o755},
		"/etc/symvirt/rc.d/50-fz": {Mode: 0o755, Data: []byte(freezeGuestScript)},
	})
	sock := filepath.Join(dir, "sv.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	// One vCPU: with two, a loaded host twice left both vCPUs spinning in
	// the guest kernel (soft lockup, RCU stall) while guestd.test loaded
	// its eBPF programs, and the test timed out.
	con := bootGuest(t, ctx, kernel, initrd, sock,
		[]string{"-m", "768", "-smp", "1", "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"},
		fmt.Sprintf("symvirt.name=fzvm symvirt.ip=10.0.2.15/24 symvirt.tport=%d", port))

	// Part 1: the freezer tests, in the guest.
	con.expect(t, ctx, "freeze-vm-unit-exit ")
	for _, l := range strings.Split(con.all(), "\n") {
		if strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "    --- ") {
			t.Log("guest:", strings.TrimSpace(l))
		}
	}
	if !con.has("--- PASS: TestFreezerFreezesUntaintedOnly") || !con.has("--- PASS: TestFreezeRoundResume") {
		t.Error("the freezer tests did not pass in the guest")
	}
	if !con.has("freeze-vm-unit-exit 0") {
		t.Error("the freezer tests failed in the guest")
	}

	// Part 2: guestd with the real tracker, the whole guest.
	con.expect(t, ctx, "freeze-helper tainted kind=connect")
	con.expect(t, ctx, "freeze-tainted 3")
	con.expect(t, ctx, "freeze-plain 3")
	h, ack := vmHandshake(t, ctx, sock)
	if ack.State != guestproto.StateIdle {
		t.Fatalf("HelloAck %+v", ack)
	}
	pctx, pcancel := context.WithTimeout(ctx, 60*time.Second)
	defer pcancel()
	if err := h.Prepare(pctx, guestproto.Prepare{ID: "fz1", Op: guestproto.OpMigrate, Deadline: 45 * time.Second, Freeze: true}); err != nil {
		t.Fatalf("Prepare(migrate, freeze) over virtio-serial: %v", err)
	}
	con.expect(t, ctx, "msg=READY")
	if m := regexp.MustCompile(`msg=READY .*frozen=(\d+)`).FindStringSubmatch(con.all()); m == nil || m[1] == "0" {
		t.Errorf("guestd's READY log does not report frozen processes (%v)", m)
	} else {
		t.Logf("guest froze %s processes", m[1])
	}
	time.Sleep(time.Second) // lines written before the freeze may still be on their way
	plain1, tainted1 := con.last("freeze-plain "), con.last("freeze-tainted ")
	time.Sleep(3 * time.Second)
	plain2, tainted2 := con.last("freeze-plain "), con.last("freeze-tainted ")
	t.Logf("while frozen (3s): untainted loop %d -> %d, tainted process %d -> %d", plain1, plain2, tainted1, tainted2)
	if plain2 != plain1 {
		t.Errorf("the untainted loop kept counting while frozen: %d -> %d", plain1, plain2)
	}
	if tainted2 < tainted1+3 {
		t.Errorf("the tainted process did not keep running: %d -> %d", tainted1, tainted2)
	}

	rctx, rcancel := context.WithTimeout(ctx, 60*time.Second)
	defer rcancel()
	if err := h.Resume(rctx, "fz1", guestproto.OutcomeMigrated); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	con.expect(t, ctx, fmt.Sprintf("freeze-plain %d", plain2+3))
	if !con.has("msg=thawed") {
		t.Error("guestd did not log the thaw")
	}
	h.Close()
}

// last returns the highest N of the console lines "<prefix>N" (-1: none).
func (c *console) last(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := -1
	for _, l := range c.lines {
		i := strings.Index(l, prefix)
		if i < 0 {
			continue
		}
		if v, err := strconv.Atoi(strings.Fields(l[i+len(prefix):] + " x")[0]); err == nil && v > n {
			n = v
		}
	}
	return n
}

// freezeGuestScript runs in the guest (rc.d): the freezer tests, then guestd
// with the tracker, an untainted shell loop and a process connected to the
// host, all printing to the console.
const freezeGuestScript = `#!/bin/sh
cd /tmp
export SYMVIRT_IN_GUEST=1
/bin/guestd.test -test.run '^(TestFreezer|TestFreezeRound|TestFindCgroup2|TestParseStat)' -test.v -test.count=1 2>&1
echo "freeze-vm-unit-exit $?"
SYMVIRT_FREEZE_HELPER=guestd /bin/guestd.test -test.run '^TestFreezeHelper$' </dev/null >/dev/console 2>&1 &
(n=0; while :; do echo "freeze-plain $n"; n=$((n + 1)); sleep 0.2; done) </dev/null >/dev/console 2>&1 &
SYMVIRT_FREEZE_HELPER=connect-count SYMVIRT_FREEZE_ADDR=10.0.2.2:$SYMVIRT_TPORT /bin/guestd.test -test.run '^TestFreezeHelper$' </dev/null >/dev/console 2>&1 &
`

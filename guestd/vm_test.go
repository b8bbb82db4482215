package guestd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestd/hookclient"
	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/internal/testguest"
)

// inGuest is set in the copy of this test binary that runs inside the VM.
var inGuest = os.Getenv("SYMVIRT_IN_GUEST") == "1"

// TestGuestdInVM boots the test guest (a real kernel with bonding) with this
// package's test binary inside, and checks there:
//   - the NIC hand-off on a real bond (TestBondHandoffInNetns, which a
//     sandbox kernel without bonding skips);
//   - guestd on a real virtio-serial port: a host handshake, a round an
//     application syncs for, the host connection dropped after READY (as
//     around a checkpoint: the port then reads EOF), a new connection whose
//     HELLO_ACK reports the round, and RESUME reaching the application;
//     guestd only re-reads a port without a host every 10 minutes here, so
//     each handshake shows that a host's connection wakes it at once;
//   - a guest user (uid 65534) against the port: it opens the port left
//     0666 before guestd runs (the control), and is refused once guestd
//     has made it root-only, while the round above still works.
//
// Skipped when the guest is not built or qemu is missing (see testguest).
func TestGuestdInVM(t *testing.T) {
	if inGuest {
		t.Skip("inside the guest already")
	}
	if testing.Short() {
		t.Skip("boots a VM")
	}
	kernel, _ := testguest.Paths(t)
	gdir := filepath.Dir(kernel)
	kver, err := os.ReadFile(filepath.Join(gdir, "KVER"))
	if err != nil {
		t.Skipf("test guest has no KVER: %v", err)
	}
	veth := filepath.Join(gdir, "kernel-pkg/lib/modules", strings.TrimSpace(string(kver)), "kernel/drivers/net/veth.ko")
	if _, err := os.Stat(veth); err != nil {
		t.Skipf("no uncompressed veth.ko in the test guest's kernel package: %v", err)
	}
	dir := shortDir(t)
	bin := guestTestBinary(t, dir)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/bin/guestd.test":        {Src: bin, Mode: 0o755},
		"/lib/modules/veth.ko":    {Src: veth},
		"/etc/symvirt/rc.d/50-gt": {Mode: 0o755, Data: []byte(guestScript)},
	})
	sock := filepath.Join(dir, "sv.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	con := bootGuest(t, ctx, kernel, initrd, sock, []string{"-m", "512"}, "symvirt.name=gdvm")

	// Part 1: the hand-off tests, in the guest's kernel.
	con.expect(t, ctx, "guestd-vm-netns-exit ")
	for _, name := range []string{"TestNICDiscoveryInNetns", "TestBondHandoffInNetns"} {
		if !con.has("--- PASS: " + name) {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
	if !con.has("guestd-vm-netns-exit 0") {
		t.Error("the hand-off tests failed in the guest")
	}

	// Part 2: a guest user against the port.
	con.expect(t, ctx, "helper-app registered")
	checkPortAttack(t, con.all())

	// Part 3: guestd on virtio-serial; the round works as before.
	h, ack := vmHandshake(t, ctx, sock)
	if ack.State != guestproto.StateIdle {
		t.Fatalf("first HelloAck %+v", ack)
	}
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	defer pcancel()
	if err := h.Prepare(pctx, guestproto.Prepare{ID: "vm1", Op: guestproto.OpCheckpoint, Deadline: 20 * time.Second}); err != nil {
		t.Fatalf("Prepare over virtio-serial: %v", err)
	}
	con.expect(t, ctx, "helper-app pending checkpoint vm1")
	h.Close() // the "checkpoint": the host goes, the port reads EOF
	time.Sleep(time.Second)
	h2, ack := vmHandshake(t, ctx, sock)
	if ack.State != guestproto.StateReady || ack.PendingID != "vm1" || ack.PendingOp != guestproto.OpCheckpoint {
		t.Fatalf("HelloAck after reconnect = %+v, want ready vm1", ack)
	}
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	if err := h2.Resume(rctx, "vm1", guestproto.OutcomeRestored); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	con.expect(t, ctx, "helper-app outcome restored checkpoint vm1")
	h2.Close()
}

// vmHandshake connects to the guest's virtio-serial chardev and shakes
// hands, retrying: a HELLO written before guestd opened the port is lost.
func vmHandshake(t *testing.T, ctx context.Context, sock string) (*guestproto.Host, guestproto.HelloAck) {
	t.Helper()
	var last error
	for ctx.Err() == nil {
		c, err := net.Dial("unix", sock)
		if err != nil {
			last = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		h := guestproto.NewHost(c, testLogger(t).With("side", "host"), guestproto.WithPingInterval(time.Second))
		hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ack, err := h.Handshake(hctx)
		cancel()
		if err == nil {
			t.Cleanup(func() { h.Close() })
			return h, ack
		}
		last = err
		h.Close()
	}
	t.Fatalf("no handshake with the guest: %v", last)
	return nil, guestproto.HelloAck{}
}

// guestScript runs in the guest (rc.d): the hand-off tests, then guestd and
// an application in the background, all printing to the console.
const guestScript = `#!/bin/sh
insmod /lib/modules/veth.ko
cd /tmp
export SYMVIRT_IN_GUEST=1
/bin/guestd.test -test.run '^(TestNICDiscoveryInNetns|TestBondHandoffInNetns)$' -test.v -test.count=1 2>&1
echo "guestd-vm-netns-exit $?"
# A guest user against the port: left 0666 (as a loose udev rule or mknod
# would), it is theirs before guestd runs (the control); guestd makes it
# root-only, and then the same user is refused.
port=$(readlink -f /dev/virtio-ports/org.symvirt.0)
echo "port-node-as-created $port $(stat -c '%a %u:%g' "$port")"
chmod 0666 "$port"
SYMVIRT_HELPER=openport SYMVIRT_PORT="$port" /bin/guestd.test -test.run '^TestHelperProcess$' 2>&1 | sed 's/^/before-guestd: /'
SYMVIRT_HELPER=guestd /bin/guestd.test -test.run '^TestHelperProcess$' </dev/null >/dev/console 2>&1 &
i=0
while [ "$(stat -c %a "$port")" != 600 ] && [ $i -lt 300 ]; do usleep 100000; i=$((i + 1)); done
SYMVIRT_HELPER=openport SYMVIRT_PORT="$port" /bin/guestd.test -test.run '^TestHelperProcess$' 2>&1 | sed 's/^/with-guestd: /'
SYMVIRT_HELPER=openport SYMVIRT_PORT=/dev/virtio-ports/org.symvirt.0 /bin/guestd.test -test.run '^TestHelperProcess$' 2>&1 | sed 's/^/with-guestd: /'
SYMVIRT_HELPER=app /bin/guestd.test -test.run '^TestHelperProcess$' </dev/null >/dev/console 2>&1 &
`

// TestHelperProcess is guestd or an application inside the VM of
// TestGuestdInVM; elsewhere it does nothing.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv("SYMVIRT_HELPER") {
	case "guestd":
		log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug})).With("guestd", "vm")
		// Re-reading the port without a host only every 10 minutes:
		// each HELLO below is read because the host's connection woke
		// guestd (SIGIO), never by the timed fallback.
		err := Run(context.Background(), Config{NICWait: 2 * time.Second, Heartbeat: time.Second, Logger: log,
			eofPoll: 10 * time.Minute})
		fmt.Println("helper-guestd exited:", err)
	case "openport":
		fmt.Println(openPortAs(os.Getenv("SYMVIRT_PORT"), 65534))
	case "app":
		var c *hookclient.Client
		for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			var err error
			if c, err = hookclient.Open("", "vmapp"); err == nil {
				break
			}
			if time.Since(start) > time.Minute {
				fmt.Println("helper-app cannot register:", err)
				return
			}
		}
		fmt.Println("helper-app registered")
		for {
			p, err := c.Wait(context.Background())
			if err != nil {
				fmt.Println("helper-app wait:", err)
				return
			}
			fmt.Println("helper-app pending", p.Op, p.ID)
			o, err := c.Sync(context.Background())
			if err != nil {
				fmt.Println("helper-app sync:", err)
				return
			}
			fmt.Println("helper-app outcome", o.Outcome, o.Op, o.ID)
		}
	default:
		t.Skip("helper process of TestGuestdInVM")
	}
}

// console collects the guest's serial output.
type console struct {
	mu    sync.Mutex
	lines []string
	more  chan struct{} // closed and replaced on each line
}

func newConsole(r interface{ Read([]byte) (int, error) }) *console {
	c := &console{more: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, strings.TrimRight(sc.Text(), "\r"))
			close(c.more)
			c.more = make(chan struct{})
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *console) has(line string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.Contains(l, line) {
			return true
		}
	}
	return false
}

func (c *console) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

func (c *console) expect(t *testing.T, ctx context.Context, line string) {
	t.Helper()
	for {
		c.mu.Lock()
		more := c.more
		c.mu.Unlock()
		if c.has(line) {
			return
		}
		select {
		case <-more:
		case <-ctx.Done():
			t.Fatalf("console never showed %q", line)
		}
	}
}

// guestTestBinary builds this package's test binary, static (the guest has
// no libc), to run inside the test guest.
func guestTestBinary(t *testing.T, dir string) string {
	bin := filepath.Join(dir, "guestd.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the test binary for the guest: %v\n%s", err, out)
	}
	return bin
}

// bootGuest boots the test guest with its console on a pipe and the
// org.symvirt.0 virtio-serial port on the unix socket sock; extra are more
// QEMU arguments, appendArgs more kernel arguments. QEMU is killed when
// the test ends, and the console printed if it failed (or with -v).
func bootGuest(t *testing.T, ctx context.Context, kernel, initrd, sock string, extra []string, appendArgs string) *console {
	args := append([]string{"-M", "q35", "-accel", "tcg",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 " + appendArgs,
		"-serial", "stdio",
		"-device", "virtio-serial-pci,id=vs0",
		"-chardev", "socket,id=sv,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,bus=vs0.0,chardev=sv,name=org.symvirt.0"}, extra...)
	cmd := exec.CommandContext(ctx, testguest.Qemu, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	con := newConsole(stdout)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() || testing.Verbose() {
			t.Logf("guest console:\n%s", con.all())
		}
	})
	return con
}

// checkPortAttack reads what the guest user got from the port: before
// guestd, the loose node opened (the control: the attack is real); with
// guestd running, the node root-only 0600 and the open refused, by the
// device path and by the /dev/virtio-ports link.
func checkPortAttack(t *testing.T, console string) {
	t.Helper()
	var before, with []string
	for _, l := range strings.Split(console, "\n") {
		switch {
		case strings.Contains(l, "before-guestd: openport "):
			before = append(before, l)
		case strings.Contains(l, "with-guestd: openport "):
			with = append(with, l)
		}
	}
	if len(before) != 1 || !strings.Contains(before[0], "uid=65534 mode=0666 owner=0:0: opened") {
		t.Errorf("control: a guest user did not open the loose port before guestd ran (%q); the attack proves nothing", before)
	}
	if len(with) != 2 {
		t.Errorf("want 2 attempts on the port with guestd running, got %q", with)
	}
	for _, l := range with {
		if !strings.Contains(l, "uid=65534 mode=0600 owner=0:0: ") || !strings.HasSuffix(l, ": permission denied") {
			t.Errorf("guest user against guestd's port: %q, want mode 0600 root and permission denied", l)
		}
	}
}

// openPortAs opens the port as guest user uid (the helper drops root
// itself: the test guest's passwd has no other user) and says what
// happened, with the node's mode and owner.
func openPortAs(path string, uid int) string {
	if err := syscall.Setgroups(nil); err != nil {
		return "openport: setgroups: " + err.Error()
	}
	if err := syscall.Setgid(uid); err != nil {
		return "openport: setgid: " + err.Error()
	}
	if err := syscall.Setuid(uid); err != nil {
		return "openport: setuid: " + err.Error()
	}
	desc := fmt.Sprintf("openport %s uid=%d", path, os.Getuid())
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err == nil {
		desc += fmt.Sprintf(" mode=%04o owner=%d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return desc + ": " + errors.Unwrap(err).Error()
	}
	f.Close()
	return desc + ": opened"
}

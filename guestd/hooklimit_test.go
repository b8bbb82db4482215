package guestd

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestd/hookclient"
)

// hogHelper is set in the copy of the test binary that plays a guest user
// holding hook socket connections: "PATH N".
var hogHelper = os.Getenv("SYMVIRT_HOOK_HOG")

// TestHookHogHelper opens N connections to the hook socket, registers on
// each, prints what each got, then holds them until stdin closes.
func TestHookHogHelper(t *testing.T) {
	if hogHelper == "" {
		t.Skip("helper of TestHookSocketPerUIDLimit")
	}
	path, ns, _ := strings.Cut(hogHelper, " ")
	n, _ := strconv.Atoi(ns)
	var held []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			fmt.Printf("conn %d: %v\n", i, err)
			continue
		}
		held = append(held, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "HELLO hog%d %d\n", i, os.Getpid())
		line, err := bufio.NewReader(c).ReadString('\n')
		fmt.Printf("conn %d: %q %v\n", i, strings.TrimSpace(line), err)
	}
	fmt.Println("holding")
	io.Copy(io.Discard, os.Stdin)
	for _, c := range held {
		c.Close()
	}
}

// hog runs TestHookHogHelper as user uid:gid; it returns the lines it
// printed up to "holding" and a function that releases its connections.
func hog(t *testing.T, path string, n int, uid, gid string) ([]string, func()) {
	t.Helper()
	cmd := exec.Command("setpriv", "--reuid", uid, "--regid", gid, "--clear-groups",
		os.Args[0], "-test.run", "^TestHookHogHelper$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("SYMVIRT_HOOK_HOG=%s %d", path, n))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	release := func() { stdin.Close(); cmd.Wait() }
	t.Cleanup(release)
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "holding" {
		lines = append(lines, sc.Text())
	}
	return lines, release
}

// One guest user cannot take every slot of the hook socket: past its
// per-uid limit it is refused with a clear error, while another user of
// the hook group and root are still served (a real round reaches root's
// application). Users outside the hook group cannot connect at all.
func TestHookSocketPerUIDLimit(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other users")
	}
	g, err := user.LookupGroup("nogroup")
	if err != nil {
		t.Skipf("no group nogroup: %v", err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	dir := shortDir(t)
	os.Chmod(dir, 0o755) // the guest users reach the socket's directory
	path := filepath.Join(dir, "run", "hook.sock")
	const limit = 8
	s, err := NewHookServer(path, testLogger(t), WithHookGroup(gid), WithHookMaxPerUID(limit))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode())
	}
	if st := statOwner(t, path); st != fmt.Sprintf("0:%d", gid) {
		t.Errorf("socket owner %s, want 0:%d", st, gid)
	}

	lines, _ := hog(t, path, limit+4, "nobody", "nogroup")
	ok, refused := 0, 0
	for _, l := range lines {
		switch {
		case strings.HasSuffix(l, `"OK 1" <nil>`):
			ok++
		case strings.Contains(l, `"ERR too many connections for uid 65534 (8)"`):
			refused++
		default:
			t.Errorf("hog: unexpected %q", l)
		}
	}
	if ok != limit || refused != 4 {
		t.Errorf("the hog got %d connections and %d refusals, want %d and 4:\n%s", ok, refused, limit, strings.Join(lines, "\n"))
	}
	if n := s.Registered(); n != limit {
		t.Errorf("registered %d, want the hog's %d", n, limit)
	}

	// Another member of the hook group is served.
	other, _ := hog(t, path, 1, "65533", "nogroup")
	if len(other) != 1 || !strings.HasSuffix(other[0], `"OK 1" <nil>`) {
		t.Errorf("another group member: %q, want OK", other)
	}
	// A user outside the group is kept out by the socket's mode.
	stranger, _ := hog(t, path, 1, "65532", "65532")
	if len(stranger) != 1 || !strings.Contains(stranger[0], "permission denied") {
		t.Errorf("a user outside the hook group: %q, want permission denied", stranger)
	}
	// Root's application is served and takes part in a round.
	app, err := hookclient.Open(path, "real-app")
	if err != nil {
		t.Fatalf("root's application with the hog holding its limit: %v", err)
	}
	defer app.Close()
	s.Begin("checkpoint", "r1")
	p, err := app.Wait(ctxFor(t, 5*time.Second))
	if err != nil || p.ID != "r1" {
		t.Errorf("root's application: Wait = %+v, %v", p, err)
	}
}

func statOwner(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("stat", "-c", "%u:%g", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// A client that neither registers nor sends anything is dropped after the
// idle timeout, freeing its slot; a registered client, and an unregistered
// one blocked in WAIT, are not idle and are kept.
func TestHookSocketIdleClientDropped(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "hook.sock")
	idle := 200 * time.Millisecond
	s, err := NewHookServer(path, testLogger(t), withHookIdle(idle))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	silent := dialRaw(t, path)
	reg := dialRaw(t, path)
	reg.expect("HELLO app 1", "OK 1")
	waiter := dialRaw(t, path)
	waiter.send("WAIT")

	silent.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := silent.br.ReadString('\n')
	if line != "ERR idle without HELLO\n" {
		t.Fatalf("silent client got %q (%v), want ERR idle without HELLO", line, err)
	}
	if _, err := silent.br.ReadString('\n'); err == nil {
		t.Fatal("silent client not disconnected")
	}
	// Well past the idle timeout for the others too.
	time.Sleep(3 * idle)
	reg.expect("POLL", "IDLE")
	s.Begin("checkpoint", "r2")
	waiter.expect("", "PENDING checkpoint r2")
}

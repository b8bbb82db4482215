package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/symvirt/symvirt/internal/testenv"
)

// publicBinary copies the symvirt binary where an unprivileged user can
// run it (testenv builds it in a 0700 directory).
func publicBinary(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "symvirt")
	data, err := os.ReadFile(testenv.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// asNobody runs the symvirt CLI as an unprivileged user.
func asNobody(bin string, args ...string) (string, error) {
	out, err := exec.Command("setpriv", append([]string{"--reuid", "nobody", "--regid", "nogroup", "--clear-groups", bin}, args...)...).CombinedOutput()
	return string(out), err
}

// describe is "mode uid" of a path, for the log and the checks.
func describe(t *testing.T, p string) (os.FileMode, uint32) {
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	uid := st.Sys().(*syscall.Stat_t).Uid
	t.Logf("%v uid %d %s", st.Mode(), uid, p)
	return st.Mode(), uid
}

// A local user must never reach hostd's or the coordinator's unix socket
// (root's API: create a VM from any file, restart hostd with any binary).
// Their sockets are 0600 and their state dirs 0700, owned by root (the
// window a chmod after listen left is shown by internal/unixsock's
// TestListenNeverExposesTheSocket). Even
// with every directory above opened to all (an operator's mistake), the
// user "nobody" is refused by the socket's own mode, while a control
// socket of mode 0666 in the same directory is reachable: the check can
// fail.
func TestAPISocketsRefuseOtherUsers(t *testing.T) {
	testenv.RequireRoot(t)
	bin := publicBinary(t)
	// The state dirs are made 0755 (t.TempDir under umask 022); the
	// daemons narrow them to 0700.
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := testenv.StartCoord(t, nil, t.TempDir(), nil)

	for _, d := range []struct{ dir, sock string }{{h.StateDir, h.Socket()}, {c.StateDir, c.Socket()}} {
		if m, uid := describe(t, d.dir); m.Perm() != 0o700 || !m.IsDir() || uid != 0 {
			t.Errorf("state dir %s: %v uid %d, want a 0700 directory of root", d.dir, m, uid)
		}
		if m, uid := describe(t, d.sock); m.Perm() != 0o600 || m&os.ModeSocket == 0 || uid != 0 {
			t.Errorf("socket %s: %v uid %d, want a 0600 socket of root", d.sock, m, uid)
		}
		// Open the way to the socket: only its own mode protects it now.
		for p := d.dir; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
			os.Chmod(p, 0o755)
		}
	}
	if m, _ := describe(t, h.Layout().VMs()); m.Perm() != 0o700 {
		t.Errorf("hostd's vms dir (QMP and guest sockets live below it): %v", m)
	}

	// Control: a 0666 socket in hostd's state dir answers nobody.
	ctl := filepath.Join(h.StateDir, "control.sock")
	l, err := net.Listen("unix", ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(ctl, 0o666)
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "[]") }))
	if out, err := asNobody(bin, "vm", "list", "--host", ctl, "--output", "json"); err != nil {
		t.Fatalf("control: nobody cannot use a 0666 socket either, so the test proves nothing: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"hostd", []string{"vm", "list", "--host", h.Socket()}},
		{"coord", []string{"hosts", "--coord", c.Socket()}},
	} {
		out, err := asNobody(bin, tc.args...)
		t.Logf("nobody -> %s: %v: %s", tc.name, err, strings.TrimSpace(out))
		if err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("nobody reached %s's socket: %v\n%s", tc.name, err, out)
		}
	}
}

// A state dir others may write in (or a symlink) is refused at start: a
// daemon never serves root's API out of a directory another user shapes.
func TestDaemonsRefuseUnsafeStateDir(t *testing.T) {
	bin := testenv.Binary(t)
	base := t.TempDir()
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	link := filepath.Join(base, "link")
	os.Symlink(t.TempDir(), link)
	for _, dir := range []string{open, link} {
		for _, args := range [][]string{{"hostd", "--state-dir", dir}, {"coord", "--state-dir", dir, "--checkpoint-dir", base}} {
			out, err := exec.Command(bin, args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "unsafe state directory") {
				t.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
			}
			if _, err := os.Stat(filepath.Join(dir, args[0]+".sock")); err == nil {
				t.Errorf("%s: a socket was created", fmt.Sprint(args))
			}
		}
	}
}

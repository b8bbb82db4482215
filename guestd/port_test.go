package guestd

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// openPort makes a loose port node root-only 0600 before guestd uses it,
// and refuses a node that is not a character device. The node here is a
// copy of /dev/null's (a real character device); the in-VM proof on the
// real port is TestGuestdInVM.
func TestOpenPortRestrictsNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod and chown need root")
	}
	dir := shortDir(t)
	os.Chmod(dir, 0o755) // the guest user may reach /dev
	node := filepath.Join(dir, "vport9p1")
	if err := syscall.Mknod(node, syscall.S_IFCHR|0o666, int(1<<8|3)); err != nil {
		t.Skipf("mknod: %v", err)
	}
	os.Chmod(node, 0o666)
	os.Chown(node, 65534, 65534)
	// Control: the loose node is open to a guest user.
	if out, err := exec.Command("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
		"sh", "-c", "exec 3<>"+node).CombinedOutput(); err != nil {
		t.Fatalf("control: nobody cannot open the loose node: %v %s", err, out)
	}
	link := filepath.Join(dir, "org.symvirt.0")
	os.Symlink("vport9p1", link)
	f, err := openPort(link)
	if err != nil {
		t.Fatalf("openPort: %v", err)
	}
	f.Close()
	fi, _ := os.Stat(node)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o600 || st.Uid != 0 || st.Gid != 0 {
		t.Errorf("node after openPort: %v %d:%d, want 0600 0:0", fi.Mode(), st.Uid, st.Gid)
	}
	out, err := exec.Command("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
		"sh", "-c", "exec 3<>"+node).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ermission denied") {
		t.Errorf("nobody opening the port node after openPort: %v %s, want permission denied", err, out)
	}

	file := filepath.Join(dir, "plain")
	os.WriteFile(file, nil, 0o600)
	if _, err := openPort(file); !errors.Is(err, ErrPortUnsafe) {
		t.Errorf("a regular file as the port: %v, want ErrPortUnsafe", err)
	}
}

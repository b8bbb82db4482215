package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// event is one inotify event in the watched directory.
type event struct {
	name string
	mask uint32
}

// watch records what appears in dir (created or moved in).
func watch(t *testing.T, dir string) func() []event {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	return func() []event {
		var out []event
		buf := make([]byte, 64<<10)
		n, _ := unix.Read(fd, buf)
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			out = append(out, event{name, ev.Mask})
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		return out
	}
}

// With a permissive umask (0: the worst case a service manager can hand a
// daemon), binding at the final path creates the socket there with mode
// 0777 before any chmod (the control: the window the old code had), while
// Listen only ever moves a 0600 socket in and creates nothing else there
// but its own 0700 directory.
func TestListenNeverExposesTheSocket(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()

	// Control: the naive way.
	events := watch(t, dir)
	naive := filepath.Join(dir, "naive.sock")
	l, err := net.Listen("unix", naive)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(naive)
	l.Close()
	evs := events()
	if len(evs) != 1 || evs[0].name != "naive.sock" || evs[0].mask&unix.IN_CREATE == 0 || st.Mode().Perm() != 0o777 {
		t.Fatalf("control: a socket bound in place under umask 0: events %v, mode %v", evs, st.Mode())
	}
	t.Logf("control: bound in place, the socket appears as %v until chmod", st.Mode())

	path := filepath.Join(dir, "hostd.sock")
	os.WriteFile(path, []byte("stale"), 0o644) // a stale file is replaced
	events()
	ul, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	for _, ev := range events() {
		switch {
		case ev.name == "hostd.sock" && ev.mask&unix.IN_MOVED_TO != 0:
		case strings.HasPrefix(ev.name, ".sock-") && ev.mask&unix.IN_ISDIR != 0:
		default:
			t.Errorf("appeared in the socket's directory: %+v", ev)
		}
	}
	st, err = os.Lstat(path)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", st.Mode(), err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".sock-*")); len(m) != 0 {
		t.Fatalf("left behind: %v", m)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the owner cannot connect: %v", err)
	}
	c.Close()
}

func TestPrivateDir(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "new", "state")
	if err := PrivateDir(fresh); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(fresh); st.Mode().Perm() != 0o700 {
		t.Fatalf("created %v", st.Mode())
	}
	readable := filepath.Join(base, "readable")
	os.Mkdir(readable, 0o755)
	os.Chmod(readable, 0o755)
	if err := PrivateDir(readable); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(readable); st.Mode().Perm() != 0o700 {
		t.Fatalf("a 0755 dir left %v", st.Mode())
	}
	writable := filepath.Join(base, "writable")
	os.Mkdir(writable, 0o700)
	os.Chmod(writable, 0o777)
	link := filepath.Join(base, "link")
	os.Symlink(fresh, link)
	for _, d := range []string{writable, link} {
		if err := PrivateDir(d); err == nil || !strings.Contains(err.Error(), "unsafe state directory") {
			t.Errorf("%s: %v", d, err)
		}
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		if err := PrivateDir(other); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("a dir owned by nobody: %v", err)
		}
	}
}

package hostd_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// secretScript makes the guest hold a string that exists nowhere else: it
// is built at run time (the script's text has only the arithmetic), so
// finding it in a file means the file is the guest's memory.
const secretScript = `#!/bin/sh
( s="symvirt-secret-$((6*7))-$((1000+337))"; echo symvirt-secret-ready
  while :; do echo "$s" >/dev/null; sleep 1; done ) &
`

const guestSecret = "symvirt-secret-42-1337"

// asNobody runs a command as an unprivileged local user.
func asNobody(args ...string) (string, error) {
	out, err := exec.Command("setpriv", append([]string{"--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--"}, args...)...).CombinedOutput()
	return string(out), err
}

func mustNobody(t *testing.T, args ...string) {
	t.Helper()
	if out, err := asNobody(args...); err != nil {
		t.Fatalf("as nobody %v: %v\n%s", args, err, out)
	}
}

// ramFileOf is where hostd h keeps VM vm's RAM on /dev/shm.
func ramFileOf(h *testenv.Hostd, vm string) (dir, file string) {
	dir = h.Layout().RAMDirs()[0]
	return dir, filepath.Join(dir, vm+".ram")
}

func ramSpec(t *testing.T, name string) hostd.Spec {
	kernel, _ := testguest.Paths(t)
	on := true
	return hostd.Spec{Name: name, Memory: 256, VCPUs: 1, Kernel: kernel, SharedMemory: &on,
		Initrd: testguest.Initrd(t, map[string]testguest.File{
			"/etc/symvirt/rc.d/30-secret": {Mode: 0o755, Data: []byte(secretScript)}}),
		Append: "console=ttyS0 quiet panic=-1 symvirt.counter=1"}
}

func statT(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// qemusOf lists the QEMU processes of a hostd's state dir.
func qemusOf(h *testenv.Hostd) []int {
	var out []int
	for _, pid := range testenv.PIDsUnder(h.StateDir) {
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.Contains(cmd, []byte("qemu")) {
			out = append(out, pid)
		}
	}
	return out
}

// Guest RAM is a file only root reads: a local user can neither read a
// running guest's RAM file nor list its directory. The control shows the
// layout before (QEMU creating a predictable file in /dev/shm with its
// umask) handed the same user a guest's memory.
func TestRAMFileNotReadableByLocalUsers(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 3*time.Minute)
	if _, err := c.Create(ctx, ramSpec(t, "ra1"), true); err != nil {
		t.Fatal(err)
	}
	waitLog(t, serialLog(h, "ra1"), regexp.MustCompile(`symvirt-secret-ready`), 2*time.Minute)
	dir, ram := ramFileOf(h, "ra1")
	if st := statT(t, dir); st.Uid != 0 || st.Mode != syscall.S_IFDIR|0o700 {
		t.Fatalf("%s: uid %d mode %#o, want root's 0700 directory", dir, st.Uid, st.Mode)
	}
	if st := statT(t, ram); st.Uid != 0 || st.Mode != syscall.S_IFREG|0o600 || st.Size != 256<<20 {
		t.Fatalf("%s: uid %d mode %#o size %d, want root's 0600 file of 256 MiB", ram, st.Uid, st.Mode, st.Size)
	}
	// Root finds the guest's secret in it: it is the guest's memory.
	deadline := time.Now().Add(time.Minute)
	for {
		mem, err := os.ReadFile(ram)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(mem, []byte(guestSecret)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not hold the guest's secret", ram)
		}
		time.Sleep(time.Second)
	}
	if out, err := asNobody("head", "-c", "4096", ram); err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("nobody reads the guest's RAM file: %v %q", err, out)
	}
	if out, err := asNobody("ls", dir); err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("nobody lists the guest RAM directory: %v %q", err, out)
	}

	// Control: the old layout, QEMU creating the file itself.
	old := filepath.Join("/dev/shm", fmt.Sprintf("symvirt-oldlayout-%d.ram", os.Getpid()))
	qemu := exec.Command(testguest.Qemu, "-machine", "q35", "-accel", "tcg", "-m", "64M", "-S",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-object", "memory-backend-file,id=ram0,share=on,size=64M,mem-path="+old, "-machine", "memory-backend=ram0")
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemu.Process.Kill(); qemu.Wait(); os.Remove(old) })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if st, err := os.Stat(old); err == nil && st.Size() == 64<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("control: qemu made no RAM file %s", old)
		}
	}
	if out, err := asNobody("head", "-c", "4096", old); err != nil {
		t.Fatalf("control: nobody could not read the old layout's RAM file (%v %q): the test shows nothing", err, out)
	}
}

// A local user who makes the RAM directory or file first (its name is
// predictable), or a symbolic link there, never gets it used as a guest's
// RAM: hostd refuses it, names it and says why, and no QEMU starts.
func TestRAMFilePreCreatedRefused(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 4*time.Minute)
	spec := ramSpec(t, "rb1")
	dir, ram := ramFileOf(h, "rb1")
	// The attacker's own file and directory, elsewhere on /dev/shm.
	lure := filepath.Join("/dev/shm", fmt.Sprintf("symvirt-lure-%d", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(lure) })
	mustNobody(t, "mkdir", "-m", "0777", lure, lure+"/empty")
	mustNobody(t, "sh", "-c", "printf attacker >"+lure+"/rb1.ram && chmod 0666 "+lure+"/rb1.ram")

	refused := func(what, want string) {
		t.Helper()
		_, err := c.Create(ctx, spec, true)
		if !errors.Is(err, hostd.ErrRAMFile) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: start: %v, want %v naming %q", what, err, hostd.ErrRAMFile, want)
		}
		t.Logf("%s: %v", what, err)
		if pids := qemusOf(h); len(pids) != 0 {
			t.Fatalf("%s: qemu runs: %v", what, pids)
		}
		if _, err := c.Status(ctx, "rb1"); !errors.Is(err, hostd.ErrNotFound) {
			t.Fatalf("%s: the refused VM is kept: %v", what, err)
		}
		if data, err := os.ReadFile(lure + "/rb1.ram"); err != nil || string(data) != "attacker" {
			t.Fatalf("%s: the attacker's file changed: %v %q", what, err, data)
		}
		if e, _ := os.ReadDir(lure + "/empty"); len(e) != 0 {
			t.Fatalf("%s: hostd wrote into the attacker's directory: %v", what, e)
		}
	}
	// Inside hostd's own directory only root can plant a file: root
	// stands in for the attacker there.
	os.WriteFile(ram, []byte("attacker"), 0o666)
	refused("file made before hostd's", ram+" exists but hostd has no record of creating it")
	os.Remove(ram)
	os.Symlink(lure+"/rb1.ram", ram)
	refused("symbolic link as the file", ram+" is a symbolic link")
	os.Remove(ram)

	// The directory is made at hostd's start: a local user takes the
	// name before (a boot empties /dev/shm).
	for _, tc := range []struct {
		what  string
		plant func()
		want  string
	}{
		{"a local user's directory", func() {
			mustNobody(t, "mkdir", "-m", "0777", dir)
			mustNobody(t, "sh", "-c", "printf attacker >"+ram)
		}, "owner uid 65534 and mode 0777"},
		{"a local user's symbolic link", func() { mustNobody(t, "ln", "-s", lure+"/empty", dir) }, dir + " is a symbolic link"},
		{"root's directory open to all", func() { os.Mkdir(dir, 0o755); os.Chmod(dir, 0o755) }, "owner uid 0 and mode 0755"},
	} {
		said := strings.Count(h.Logs(), "guest RAM directory refused")
		h.Kill()
		os.RemoveAll(dir)
		tc.plant()
		h.Start()
		if strings.Count(h.Logs(), "guest RAM directory refused") == said {
			t.Fatalf("%s: hostd started without a word", tc.what)
		}
		refused(tc.what, tc.want)
		if tc.what == "a local user's directory" {
			if data, err := os.ReadFile(ram); err != nil || string(data) != "attacker" {
				t.Fatalf("the attacker's file in its directory changed: %v %q", err, data)
			}
		}
	}

	// With the name free again, the VM starts on a file of hostd's.
	h.Kill()
	os.RemoveAll(dir)
	h.Start()
	if _, err := c.Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	if st := statT(t, ram); st.Uid != 0 || st.Mode != syscall.S_IFREG|0o600 {
		t.Fatalf("%s: uid %d mode %#o", ram, st.Uid, st.Mode)
	}
	if _, err := c.Stop(ctx, "rb1", time.Second); err != nil {
		t.Fatal(err)
	}
}

// A running VM's RAM file swapped for another file (same name, another
// inode): hostd refuses it for a warm restart, after its own restart
// (re-adoption keeps the QEMU, which maps its own RAM, and reports the
// file), and for a start after a stop; the guest never runs on it.
func TestRAMFileSwapRefused(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 5*time.Minute)
	info, err := c.Create(ctx, ramSpec(t, "rc1"), true)
	if err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "rc1")
	n := waitCounter(t, log, 2, 2*time.Minute)
	dir, ram := ramFileOf(h, "rc1")
	orig := statT(t, ram).Ino
	// The swap (root: nobody else can write in hostd's directory).
	fake := filepath.Join(dir, "fake")
	if err := os.WriteFile(fake, []byte("attacker"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(fake, 256<<20)
	if err := os.Rename(fake, ram); err != nil {
		t.Fatal(err)
	}
	swapped := statT(t, ram).Ino
	if swapped == orig {
		t.Fatal("the swap kept the inode")
	}
	wantErr := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, hostd.ErrRAMFile) || !strings.Contains(err.Error(), ram) || !strings.Contains(err.Error(), fmt.Sprintf("inode %d", swapped)) {
			t.Fatalf("%s: %v, want %v naming %s and inode %d", what, err, hostd.ErrRAMFile, ram, swapped)
		}
		t.Logf("%s: %v", what, err)
	}
	running := func(what string) {
		t.Helper()
		st := mustStatus(t, c, "rc1")
		if st.State != "running" || st.PID != info.PID || !strings.Contains(st.RAMError, "replaced") {
			t.Fatalf("%s: state %s pid %d (want running, pid %d), ram_error %q", what, st.State, st.PID, info.PID, st.RAMError)
		}
		n = waitCounter(t, log, n+2, time.Minute)
	}

	_, err = c.Rejuvenate(ctx, "rc1", hostd.RejuvenateOptions{NoGuest: true})
	wantErr("rejuvenate", err)
	running("after the refused rejuvenate")

	h.Kill()
	h.Start()
	if !strings.Contains(h.Logs(), "guest RAM file replaced") {
		t.Fatal("re-adoption did not report the replaced RAM file")
	}
	running("after hostd's restart")
	_, err = c.Rejuvenate(ctx, "rc1", hostd.RejuvenateOptions{NoGuest: true})
	wantErr("rejuvenate after hostd's restart", err)
	running("after the second refused rejuvenate")

	if st, err := c.Stop(ctx, "rc1", time.Second); err != nil || st.State != "stopped" {
		t.Fatalf("stop: %v %+v", err, st)
	}
	if st := statT(t, ram); st.Ino != swapped {
		t.Fatalf("the swapped file is gone or changed after stop (inode %d)", st.Ino)
	}
	_, err = c.Action(ctx, "rc1", "start")
	wantErr("start after stop", err)
	if st := mustStatus(t, c, "rc1"); st.State != "stopped" || len(qemusOf(h)) != 0 {
		t.Fatalf("after the refused start: %+v, qemus %v", st, qemusOf(h))
	}
	data := make([]byte, 8)
	if f, err := os.Open(ram); err == nil {
		f.Read(data)
		f.Close()
	}
	if string(data) != "attacker" {
		t.Fatalf("the swapped file was written: %q", data)
	}

	// The operator removes it: the VM starts on a new file of hostd's.
	os.Remove(ram)
	if _, err := c.Action(ctx, "rc1", "start"); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(ram); err != nil || st.Mode() != fs.FileMode(0o600) {
		t.Fatalf("new RAM file: %v %v", err, st)
	}
	if st := mustStatus(t, c, "rc1"); st.RAMError != "" {
		t.Fatalf("ram_error after a clean start: %q", st.RAMError)
	}
}

// waitGone waits until path does not exist (a generous bound, not a timing).
func waitGone(t *testing.T, what, path string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("%s: %s still there (%v)", what, path, err)
		}
	}
}

// A QEMU killed with SIGKILL leaves its guest RAM file (as big as the
// guest) on /dev/shm: hostd removes it once it sees QEMU gone, at once or
// when it starts again, and also the files of VMs it no longer has. The
// control: a warm restart, where the old QEMU also goes away, keeps the
// file the new QEMU runs on.
func TestRAMFileReclaimedWhenQEMUKilled(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	c := h.Client()
	ctx := ctxT(t, 5*time.Minute)
	info, err := c.Create(ctx, ramSpec(t, "rk1"), true)
	if err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "rk1")
	waitCounter(t, log, 2, 2*time.Minute)
	dir, ram := ramFileOf(h, "rk1")
	statT(t, ram)
	syscall.Kill(info.PID, syscall.SIGKILL)
	waitGone(t, "qemu killed while hostd runs", ram)
	if st := mustStatus(t, c, "rk1"); st.State != "stopped" {
		t.Fatalf("after the kill: %s", st.State)
	}

	// Killed while hostd is down; and a file of a VM hostd no longer has.
	if info, err = c.Action(ctx, "rk1", "start"); err != nil {
		t.Fatal(err)
	}
	statT(t, ram)
	h.Kill()
	syscall.Kill(info.PID, syscall.SIGKILL)
	for processAlive(info.PID) {
		time.Sleep(50 * time.Millisecond)
	}
	ghost := filepath.Join(dir, "gone-vm.ram")
	if err := os.WriteFile(ghost, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.Start()
	for _, f := range []string{ram, ghost} {
		if _, err := os.Lstat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after hostd's start: %s still there (%v)", f, err)
		}
	}
	if st := mustStatus(t, c, "rk1"); st.State != "stopped" {
		t.Fatalf("after hostd's start: %s", st.State)
	}

	// The control: the old QEMU of a warm restart exits, the file stays.
	if info, err = c.Action(ctx, "rk1", "start"); err != nil {
		t.Fatal(err)
	}
	n := waitCounter(t, log, 2, 2*time.Minute)
	ino := statT(t, ram).Ino
	res, err := c.Rejuvenate(ctx, "rk1", hostd.RejuvenateOptions{NoGuest: true})
	if err != nil || res.NewPID == info.PID {
		t.Fatalf("rejuvenate: %v %+v", err, res)
	}
	for processAlive(info.PID) {
		time.Sleep(50 * time.Millisecond)
	}
	waitCounter(t, log, n+3, time.Minute)
	if st := mustStatus(t, c, "rk1"); st.State != "running" || st.PID != res.NewPID || st.RAMError != "" || statT(t, ram).Ino != ino {
		t.Fatalf("after the warm restart: %+v, ram inode %d (was %d)", st, statT(t, ram).Ino, ino)
	}
	if _, err := c.Stop(ctx, "rk1", time.Second); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "stopped", ram)
}

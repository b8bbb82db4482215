package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/hostd/sentinel"
	"golang.org/x/sys/unix"
)

// OpenRAMDir makes its directory 0700 and refuses one someone else made:
// a symbolic link, another owner, a wider mode; it never repairs one.
func TestOpenRAMDir(t *testing.T) {
	base := t.TempDir()
	own := filepath.Join(base, "own")
	d, err := OpenRAMDir(own)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if st, err := os.Stat(own); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("made %v %v, want 0700", st.Mode(), err)
	}
	if d, err := OpenRAMDir(own); err != nil {
		t.Fatalf("its own directory again: %v", err)
	} else {
		d.Close()
	}
	wide := filepath.Join(base, "wide")
	os.Mkdir(wide, 0o700)
	os.Chmod(wide, 0o755)
	link := filepath.Join(base, "link")
	os.Symlink(own, link)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	cases := map[string]string{wide: "mode 0755", link: "is a symbolic link", file: "not a directory"}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		cases[other] = "owner uid 65534"
	}
	for dir, want := range cases {
		d, err := OpenRAMDir(dir)
		if err == nil {
			d.Close()
		}
		if !errors.Is(err, sentinel.ErrRAMFile) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %v saying %q", dir, err, sentinel.ErrRAMFile, want)
		}
	}
	if st, _ := os.Stat(wide); st.Mode().Perm() != 0o755 {
		t.Errorf("a refused directory was changed to %v", st.Mode())
	}
}

// differs names every way a file is not the one recorded; MappedBy finds
// a mapped file by device and inode in /proc/PID/maps.
func TestRAMIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.ram")
	os.WriteFile(path, make([]byte, 4096), 0o600)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	id := identityOf(path, &st)
	if d := id.differs(path, &st); d != "" {
		t.Fatalf("the same file differs: %s", d)
	}
	other := st
	other.Ino, other.Uid, other.Mode = st.Ino+1, 65534, st.Mode|0o044
	d := id.differs(path, &other)
	for _, want := range []string{"inode", "owner uid 65534", "mode 0100644"} {
		if !strings.Contains(d, want) {
			t.Errorf("differs %q does not say %q", d, want)
		}
	}
	if id.MappedBy(os.Getpid()) {
		t.Fatal("an unmapped file is reported mapped")
	}
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if !id.MappedBy(os.Getpid()) {
		t.Fatal("a mapped file is not found in /proc/self/maps")
	}
}

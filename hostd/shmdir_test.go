package hostd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testguest"
	"golang.org/x/sys/unix"
)

// hugeTmpfs mounts a tmpfs with huge=within_size (mode 0755) for the
// test, or skips it where mounting is not allowed.
func hugeTmpfs(t *testing.T) string {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a tmpfs")
	}
	dir, err := mountHugeTmpfs(t, 1<<30)
	if err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	return dir
}

// mountHugeTmpfs mounts a tmpfs of size bytes with huge=within_size (mode
// 0755) in a directory of the test's, unmounted at its end.
func mountHugeTmpfs(t *testing.T, size int64) (string, error) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("huge=within_size,mode=0755,size=%d", size)); err != nil {
		return "", fmt.Errorf("mount a tmpfs at %s: %w", dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir, nil
}

// A host whose shm_dir is a tmpfs with huge pages keeps its VMs' RAM
// files there, made of 2 MiB pages (a mapping of the file, as hostd's
// copy has one, maps them as such); a VM checkpointed there restores
// there and counts on.
func TestGuestRAMOnHugeTmpfs(t *testing.T) {
	shm := hugeTmpfs(t)
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	h, err := New(Config{StateDir: t.TempDir(), Policy: testPolicy(t), ShmDir: shm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, vm := range h.List() {
			if v, err := h.Get(vm.Name); err == nil {
				v.kill()
			}
		}
		h.Close()
	})
	on := true
	vm, err := h.Create(Spec{Name: "thp1", Memory: 256, Kernel: kernel, Initrd: initrd, Append: "console=ttyS0 quiet symvirt.counter=1", SharedMemory: &on})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ram := h.ramPath(vm.Spec())
	if !strings.HasPrefix(ram, shm+"/") {
		t.Fatalf("RAM file %s is not on shm_dir %s", ram, shm)
	}
	waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-counter 3`))
	if kb := hugeMapped(t, ram); kb == 0 {
		t.Fatalf("a mapping of %s has none of it on 2 MiB pages", ram)
	} else {
		t.Logf("a mapping of %s has %d MiB of it on 2 MiB pages", ram, kb>>10)
	}
	if huge, _ := qemu.ShmHuge(qemu.DefaultShmDir); huge == "never" { // control: the same check sees 4 KiB pages
		f, err := os.CreateTemp(qemu.DefaultShmDir, "symvirt-thp-control-*")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(f.Name())
		f.Truncate(8 << 20)
		f.Close()
		if kb := hugeMapped(t, f.Name()); kb != 0 {
			t.Fatalf("control: %s on a tmpfs without huge pages: %d KiB on 2 MiB pages", f.Name(), kb)
		}
	}
	dir := filepath.Join(t.TempDir(), "ck")
	if _, err := vm.Checkpoint(ctx, CheckpointOptions{Dir: dir, NoGuest: true, Stop: true}, nil); err != nil {
		t.Fatal(err)
	}
	h.forget(vm)
	vm2, err := h.Restore(ctx, RestoreOptions{Dir: dir, NoGuest: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.ramPath(vm2.Spec()); !strings.HasPrefix(got, shm+"/") {
		t.Fatalf("restored RAM file %s is not on shm_dir %s", got, shm)
	}
	serial := filepath.Join(vm2.dir, fileSerial)
	re := regexp.MustCompile(`symvirt-counter (\d+)`)
	waitSerial(t, serial, re)
	data, _ := os.ReadFile(serial)
	if first, _ := strconv.Atoi(re.FindStringSubmatch(string(data))[1]); first < 3 {
		t.Fatalf("restored guest counts from %d: it booted afresh", first)
	}
}

// hugeMapped maps the file at path read-only, faults it in and returns
// how many KiB of the mapping are huge pages (smaps' ShmemPmdMapped and
// FilePmdMapped).
func hugeMapped(t *testing.T, path string) (kb int) {
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(file.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := unix.Madvise(mem, unix.MADV_POPULATE_READ); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && strings.Contains(fields[0], "-") {
			in = fields[5] == path
			continue
		}
		if in && len(fields) >= 2 && (fields[0] == "ShmemPmdMapped:" || fields[0] == "FilePmdMapped:") {
			n, _ := strconv.Atoi(fields[1])
			kb += n
		}
	}
	return kb
}

// shm_dir must be a tmpfs that other users cannot write without the
// sticky bit.
func TestShmDirRefused(t *testing.T) {
	shm := hugeTmpfs(t)
	open := filepath.Join(shm, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	disk, _ := os.Getwd()
	var fs unix.Statfs_t
	for _, c := range []struct{ dir, want string }{
		{open, "other users can write it without the sticky bit"},
		{disk, "is not on a tmpfs"},
		{"relative", "want an absolute path"},
	} {
		if c.dir == disk && (unix.Statfs(disk, &fs) != nil || fs.Type == unix.TMPFS_MAGIC) {
			continue // a test tree on a tmpfs
		}
		_, err := New(Config{StateDir: t.TempDir(), Policy: testPolicy(t), ShmDir: c.dir})
		if err == nil || !strings.Contains(err.Error(), "shm_dir") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("shm_dir %s: %v, want an error saying %q", c.dir, err, c.want)
		}
	}
	if err := os.Chmod(open, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{StateDir: t.TempDir(), Policy: testPolicy(t), ShmDir: open})
	if err != nil {
		t.Fatalf("shm_dir %s with the sticky bit: %v", open, err)
	}
	h.Close()
}

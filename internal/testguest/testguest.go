package testguest

import (
	"cmp"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Qemu is the emulator the test guest is run with: $SYMVIRT_QEMU (make
// test-qemu10 sets it to QEMU 10's build/qemu10/bin/qemu-system-x86_64),
// else qemu-system-x86_64; hostd's default is the same (Config.QEMU).
var Qemu = cmp.Or(os.Getenv("SYMVIRT_QEMU"), "qemu-system-x86_64")

// Paths returns the test guest's kernel and initrd. The guest directory is
// $SYMVIRT_GUEST_DIR, or build/guest/ in the module root (the nearest
// directory above the working directory that holds go.mod).
//
// When the guest is not built, or Qemu is not found, the
// test is skipped; with SYMVIRT_REQUIRE_QEMU=1 it fails instead.
func Paths(t testing.TB) (kernel, initrd string) {
	t.Helper()
	if _, err := exec.LookPath(Qemu); err != nil {
		unavailable(t, Qemu+" not found: run make deps")
	}
	dir, err := guestDir()
	if err == nil {
		kernel = filepath.Join(dir, "vmlinuz")
		initrd = filepath.Join(dir, "initrd.img")
		for _, p := range []string{kernel, initrd} {
			if _, err = os.Stat(p); err != nil {
				break
			}
		}
	}
	if err != nil {
		unavailable(t, "test guest not built: run make guest ("+err.Error()+")")
	}
	return kernel, initrd
}

// Initrd returns the path of a new initrd (in t.TempDir()) made of the test
// guest's initrd followed by a gzip'd cpio archive of files, keyed by their
// path in the guest. The kernel unpacks the archives in turn, so files
// replace those of the same name in the base initrd. Files meant to run from
// /etc/symvirt/rc.d/ need an executable Mode (e.g. 0755).
func Initrd(t testing.TB, files map[string]File) string {
	t.Helper()
	_, base := Paths(t)
	out := filepath.Join(t.TempDir(), "initrd.img")
	if err := appendInitrd(out, base, files); err != nil {
		t.Fatalf("testguest: building initrd: %v", err)
	}
	return out
}

func appendInitrd(out, base string, files map[string]File) (err error) {
	in, err := os.Open(base)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := io.Copy(f, in); err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		return err
	}
	if err := WriteCPIO(zw, files); err != nil {
		return err
	}
	return zw.Close()
}

func unavailable(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("SYMVIRT_REQUIRE_QEMU") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func guestDir() (string, error) {
	if d := os.Getenv("SYMVIRT_GUEST_DIR"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "build", "guest"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

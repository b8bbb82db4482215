package manifest

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/symvirt/symvirt/hostd/spec"
)

// Every file a manifest names is a plain name in the checkpoint directory,
// and the spec's disks are the checkpoint's copies: a manifest that says
// otherwise is refused even when its signature is good.
func TestCheckManifestConfinesPaths(t *testing.T) {
	good := func() Manifest {
		return Manifest{Version: 1, VM: "v1",
			Spec:  spec.Spec{Name: "v1", Disks: []spec.Disk{{ID: "d0", Path: "disk-d0.raw", Format: "raw"}}},
			Files: []FileDigest{{Name: StateName, Role: "state"}, {Name: "disk-d0.raw", Role: "disk", ID: "d0"}}}
	}
	if err := Check(good()); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*Manifest){
		"disk path ../../etc/shadow":  func(m *Manifest) { m.Spec.Disks[0].Path = "../../etc/shadow" },
		"disk path absolute":          func(m *Manifest) { m.Spec.Disks[0].Path = "/etc/shadow" },
		"disk file ../../etc/shadow":  func(m *Manifest) { m.Files[1].Name = "../../etc/shadow"; m.Spec.Disks[0].Path = m.Files[1].Name },
		"disk file in a subdirectory": func(m *Manifest) { m.Files[1].Name = "sub/d"; m.Spec.Disks[0].Path = m.Files[1].Name },
		"disk file ..":                func(m *Manifest) { m.Files[1].Name = ".."; m.Spec.Disks[0].Path = ".." },
		"state elsewhere":             func(m *Manifest) { m.Files[0].Name = "/dev/sda" },
		"state renamed":               func(m *Manifest) { m.Files[0].Name = "other.bin" },
		"two state files":             func(m *Manifest) { m.Files[1].Role = "state" },
		"unknown role":                func(m *Manifest) { m.Files[1].Role = "kernel" },
		"file listed twice":           func(m *Manifest) { m.Files = append(m.Files, m.Files[1]) },
		"disk without its file":       func(m *Manifest) { m.Files = m.Files[:1] },
		"file without its disk":       func(m *Manifest) { m.Spec.Disks = nil },
		"no files":                    func(m *Manifest) { m.Files = nil },
	} {
		m := good()
		change(&m)
		if err := Check(m); !errors.Is(err, ErrChecksum) {
			t.Errorf("%s: %v, want ErrChecksum", name, err)
		}
	}
}

// A checkpoint's file is opened without following a symlink and must be a
// regular file (a FIFO would hang the restore).
func TestOpenInDirRefusesSymlinksAndSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ok"), []byte("x"), 0o600)
	os.Symlink("/etc/shadow", filepath.Join(dir, "link"))
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenInDir(dir, "ok")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, name := range []string{"link", "fifo", "../ok", "/etc/shadow"} {
		if f, err := OpenInDir(dir, name); !errors.Is(err, ErrChecksum) {
			if f != nil {
				f.Close()
			}
			t.Errorf("%s: %v, want ErrChecksum", name, err)
		}
	}
}

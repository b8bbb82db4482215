package hostd

import (
	"errors"
	"path/filepath"
	"testing"
)

// TestCopiesStorage: a migration takes the disks along when asked, when
// the host says its disks are local, or when a disk lives in the state
// directory (a restored VM's); never for a VM without disks.
func TestCopiesStorage(t *testing.T) {
	h := newHostAt(t, t.TempDir())
	shared := Spec{Name: "v", Disks: []Disk{{ID: "root", Path: "/srv/disks/v.qcow2", Format: "qcow2"}}}
	inState := Spec{Name: "v", Disks: []Disk{{ID: "root", Path: filepath.Join(h.cfg.StateDir, "vms", "v", "disk-root.qcow2"), Format: "qcow2"}}}
	for _, c := range []struct {
		what         string
		spec         Spec
		asked, local bool
		want         bool
	}{
		{"shared disk", shared, false, false, false},
		{"asked", shared, true, false, true},
		{"local_disks", shared, false, true, true},
		{"disk in the state directory", inState, false, false, true},
		{"no disk, asked", Spec{Name: "v"}, true, true, false},
	} {
		h.cfg.LocalDisks = c.local
		if got := h.newVM("v", c.spec).copiesStorage(c.asked); got != c.want {
			t.Errorf("%s: copies storage %v, want %v", c.what, got, c.want)
		}
	}
}

// TestCopyStorageSpec: the destination puts every disk in the VM's own
// directory and refuses a disk list that does not match the spec; the
// policy still covers what else the spec names.
func TestCopyStorageSpec(t *testing.T) {
	h := newHostAt(t, t.TempDir())
	spec := Spec{Name: "v", Disks: []Disk{{ID: "root", Path: "/elsewhere/root.qcow2", Format: "qcow2"},
		{ID: "data", Path: "/elsewhere/data.raw", Format: "raw"}}}
	disks := []CopyDisk{{ID: "root", Format: "qcow2", Size: 2 << 30}, {ID: "data", Format: "raw", Size: 1 << 20}}
	got, err := h.copyStorageSpec(spec, disks)
	if err != nil {
		t.Fatal(err)
	}
	dir := h.layout().VM("v")
	if got.Disks[0].Path != filepath.Join(dir, "disk-root.qcow2") || got.Disks[1].Path != filepath.Join(dir, "disk-data.raw") {
		t.Fatalf("disks not in the VM's directory: %+v", got.Disks)
	}
	if spec.Disks[0].Path != "/elsewhere/root.qcow2" {
		t.Fatal("the request's spec was changed in place")
	}
	for what, bad := range map[string][]CopyDisk{
		"one missing":  disks[:1],
		"wrong id":     {{ID: "other", Format: "qcow2", Size: 1}, disks[1]},
		"wrong format": {{ID: "root", Format: "raw", Size: 1}, disks[1]},
		"no size":      {{ID: "root", Format: "qcow2"}, disks[1]},
	} {
		if _, err := h.copyStorageSpec(spec, bad); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%s: %v, want ErrInvalidSpec", what, err)
		}
	}
	escape := spec
	escape.Name = "../x"
	if _, err := h.copyStorageSpec(escape, disks); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("a name leaving vms/: %v", err)
	}
	kernel := got
	kernel.Kernel = "/etc/shadow"
	if err := h.checkCopyStorage(kernel); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("a kernel outside the image directories: %v, want ErrUnauthorized", err)
	}
	if err := h.checkCopyStorage(got); err != nil {
		t.Errorf("the copied disks are the host's own files: %v", err)
	}
}

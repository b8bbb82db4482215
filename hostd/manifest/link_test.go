package manifest

import (
	"errors"
	"testing"

	"github.com/symvirt/symvirt/hostd/spec"
)

// A disk's parent link names a relative directory in the checkpoint store
// and a plain file name there, with its digest.
func TestCheckParentLink(t *testing.T) {
	good := func() Manifest {
		return Manifest{Version: 1, VM: "v1",
			Spec: spec.Spec{Name: "v1", Disks: []spec.Disk{{ID: "d0", Path: "disk-d0.qcow2", Format: "qcow2"}}},
			Files: []FileDigest{{Name: StateName, Role: "state"}, {Name: "disk-d0.qcow2", Role: "disk", ID: "d0",
				Parent: &Link{Dir: "../../ck1/v1", Name: "disk-d0.qcow2", Size: 1, SHA256: "ab"}}}}
	}
	if err := Check(good()); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*Link){
		"absolute dir":    func(l *Link) { l.Dir = "/etc" },
		"no dir":          func(l *Link) { l.Dir = "" },
		"name with a dir": func(l *Link) { l.Name = "../x" },
		"no digest":       func(l *Link) { l.SHA256 = "" },
	} {
		m := good()
		change(m.Files[1].Parent)
		if err := Check(m); !errors.Is(err, ErrChecksum) {
			t.Errorf("%s: %v, want ErrChecksum", name, err)
		}
	}
}

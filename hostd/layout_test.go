package hostd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Layout names the files hostd itself makes: a created VM's directory and
// spec, the RAM directories New makes, and the shared RAM file's path.
func TestLayoutIsWhereHostdKeepsItsFiles(t *testing.T) {
	state, images := t.TempDir(), t.TempDir()
	kernel := filepath.Join(images, "vmlinuz")
	os.WriteFile(kernel, []byte("k"), 0o600)
	l := Layout{StateDir: state}
	t.Cleanup(func() {
		for _, d := range l.RAMDirs() {
			os.RemoveAll(d)
		}
	})
	h, err := New(Config{StateDir: state, Policy: Policy{ImageDirs: []string{images}}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.Create(Spec{Name: "v1", Memory: 64, Kernel: kernel}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(l.VM("v1"), fileSpec)); err != nil {
		t.Errorf("the VM's spec is not under Layout.VM: %v", err)
	}
	if filepath.Dir(l.SerialLog("v1")) != l.VM("v1") || filepath.Dir(l.VM("v1")) != l.VMs() {
		t.Errorf("serial log %s, VM dir %s, VMs %s", l.SerialLog("v1"), l.VM("v1"), l.VMs())
	}
	for _, d := range l.RAMDirs() {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			t.Errorf("RAM dir %s not made by New: %v", d, err)
		}
	}
	if ram := h.ramPath(Spec{Name: "v1"}); !strings.HasPrefix(ram, l.RAMDirs()[0]+"/") {
		t.Errorf("RAM file %s is outside %s", ram, l.RAMDirs()[0])
	}
	if other := (Layout{StateDir: t.TempDir()}).RAMDirs()[0]; other == l.RAMDirs()[0] {
		t.Errorf("two state dirs share the RAM dir %s", other)
	}
}

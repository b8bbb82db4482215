package hostd

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/testguest"
)

// testPolicy lets an in-process hostd's specs use the test guest's
// directory and the test's temporary directories.
func testPolicy(t *testing.T) Policy {
	kernel, _ := testguest.Paths(t)
	dirs := []string{filepath.Dir(kernel), filepath.Dir(t.TempDir())}
	return Policy{ImageDirs: dirs, DiskDirs: dirs}
}

func TestPolicyDefaultsAndConfigErrors(t *testing.T) {
	c := Config{StateDir: "/var/lib/symvirt"}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if got := c.Policy.ImageDirs; len(got) != 1 || got[0] != "/var/lib/symvirt/images" {
		t.Errorf("default image_dirs: %v", got)
	}
	if got := c.Policy.DiskDirs; len(got) != 1 || got[0] != "/var/lib/symvirt/disks" {
		t.Errorf("default disk_dirs: %v", got)
	}
	c = Config{StateDir: "/s", Policy: Policy{DiskDirs: []string{"rel"}}}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), `policy.disk_dirs: "rel" is not an absolute path`) {
		t.Errorf("relative disk dir: %v", err)
	}
	c = Config{StateDir: "/s", QEMUUser: "no-such-user-here"}
	if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "qemu_user") {
		t.Errorf("unknown qemu_user: %v", err)
	}
}

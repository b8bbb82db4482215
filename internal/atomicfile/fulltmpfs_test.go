package atomicfile

import (
	"os"
	"os/exec"
	"testing"
)

// fullTmpfs mounts a 4 KiB tmpfs (root only; skipped otherwise).
func fullTmpfs(t *testing.T) string {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

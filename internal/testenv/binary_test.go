package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The CLI is built once into the tree's own directory, which must be
// this user's alone.
func TestBinary(t *testing.T) {
	bin := Binary(t)
	if out, err := exec.Command(bin, "--help").CombinedOutput(); len(out) == 0 {
		t.Fatalf("%s --help: %v, no output", bin, err)
	}
	dir := filepath.Join(t.TempDir(), "bin")
	if err := ownDir(dir); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	if err := ownDir(dir); err == nil {
		t.Fatal("a directory others may write is accepted")
	}
}

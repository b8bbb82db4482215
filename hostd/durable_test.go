package hostd

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A writeJSON whose rename fails (the target is a non-empty directory)
// leaves no temporary file; before atomicfile it left state.json.tmp.
func TestWriteJSONFailureLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "runtime.json")
	os.MkdirAll(filepath.Join(target, "x"), 0o700)
	if err := writeJSON(target, map[string]int{"pid": 1}); err == nil {
		t.Fatal("writeJSON over a non-empty directory succeeded")
	}
	if err := writeJSON(filepath.Join(dir, "bad.json"), map[string]any{"f": func() {}}); err == nil {
		t.Fatal("writeJSON of a value JSON cannot hold succeeded")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "runtime.json" {
			t.Errorf("a failed writeJSON left %s", e.Name())
		}
	}
}

// freshDir (a checkpoint directory of a save or a live arm) and a VM
// checkpoint's directory are created through the durable mkdir: the
// parent of every directory created is fsynced.
func TestCheckpointDirsAreDurable(t *testing.T) {
	var made []string
	mkdirAll = func(dir string, perm os.FileMode) error {
		made = append(made, "all:"+dir)
		return os.MkdirAll(dir, perm)
	}
	mkdir = func(dir string, perm os.FileMode) error {
		made = append(made, dir)
		return os.Mkdir(dir, perm)
	}
	t.Cleanup(func() { mkdirAll, mkdir = defaultMkdirAll, defaultMkdir })
	root := t.TempDir()
	dir := filepath.Join(root, "ck-1", "vm1")
	if err := freshDir(dir); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "stale"), nil, 0o600)
	if err := freshDir(dir); err != nil { // a retried step starts empty
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a retried freshDir kept %v", entries)
	}
	want := []string{"all:" + filepath.Dir(dir), dir, "all:" + filepath.Dir(dir), dir}
	if !slices.Equal(made, want) {
		t.Fatalf("directories made %v, want %v", made, want)
	}
}

package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tempFiles lists what a write left in dir besides the names given.
func leftovers(t *testing.T, dir string, keep ...string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !slices.Contains(keep, e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestWriteFileReplacesDurably(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	var synced []string
	syncDir = func(d string) error { synced = append(synced, d); return SyncDir(d) }
	t.Cleanup(func() { syncDir = SyncDir })
	for _, data := range []string{"one", "two"} {
		if err := WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(p); string(got) != data {
			t.Fatalf("read %q, want %q", got, data)
		}
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if len(synced) != 2 || synced[0] != dir {
		t.Fatalf("directory syncs %v, want %s twice", synced, dir)
	}
	if l := leftovers(t, dir, "state.json"); len(l) != 0 {
		t.Fatalf("left behind: %v", l)
	}
}

// A write whose rename fails (the target is a non-empty directory) must
// remove its temporary file: the defect was a stray path+".tmp".
func TestWriteFileFailureLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "busy")
	os.MkdirAll(filepath.Join(target, "x"), 0o700)
	if err := WriteFile(target, []byte("data"), 0o600); err == nil {
		t.Fatal("rename over a non-empty directory succeeded")
	} else if !strings.Contains(err.Error(), target) {
		t.Fatalf("the error does not name the file: %v", err)
	}
	if l := leftovers(t, dir, "busy"); len(l) != 0 {
		t.Fatalf("a failed write left %v", l)
	}
}

// A full file system: the write itself fails (ENOSPC from /dev/full's
// equivalent is not available for regular files, so a tmpfs of 4 KiB is
// used when root can mount one).
func TestWriteFileFullDiskLeavesNoTemp(t *testing.T) {
	dir := fullTmpfs(t)
	err := WriteFile(filepath.Join(dir, "big"), make([]byte, 1<<20), 0o600)
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("a 1 MiB write into a 4 KiB file system: %v", err)
	}
	if l := leftovers(t, dir); len(l) != 0 {
		t.Fatalf("a failed write left %v", l)
	}
}

func TestWriteFileNewNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ca.key")
	if err := WriteFileNew(p, []byte("first"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileNew(p, []byte("second"), 0o400); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second write: %v", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "first" {
		t.Fatalf("replaced: %q", got)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o400 {
		t.Fatalf("mode %v", st.Mode())
	}
	if l := leftovers(t, dir, "ca.key"); len(l) != 0 {
		t.Fatalf("left behind: %v", l)
	}
}

// A symlink planted where the temporary file will go is never followed:
// the temporary name is random and opened with O_EXCL.
func TestWriteFileDoesNotFollowPlantedLink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("keep"), 0o600)
	os.Symlink(victim, filepath.Join(dir, "state.json.tmp"))
	if err := WriteFile(filepath.Join(dir, "state.json"), []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "keep" {
		t.Fatalf("the write went through the planted link: %q", got)
	}
}

// MkdirAll fsyncs the parent of every directory it creates (and only
// those), so a crash cannot lose a checkpoint directory's entry.
func TestMkdirAllSyncsEveryParent(t *testing.T) {
	root := t.TempDir()
	var synced []string
	syncDir = func(d string) error { synced = append(synced, d); return SyncDir(d) }
	t.Cleanup(func() { syncDir = SyncDir })
	dir := filepath.Join(root, "ck-1", "vm1")
	if err := MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	want := []string{root, filepath.Join(root, "ck-1")}
	if !slices.Equal(synced, want) {
		t.Fatalf("synced %v, want %v", synced, want)
	}
	synced = nil
	if err := MkdirAll(dir, 0o700); err != nil || len(synced) != 0 {
		t.Fatalf("an existing directory: %v, synced %v", err, synced)
	}
	if err := Mkdir(filepath.Join(dir, "x"), 0o700); err != nil || !slices.Equal(synced, []string{dir}) {
		t.Fatalf("Mkdir: %v, synced %v", err, synced)
	}
}

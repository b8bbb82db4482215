package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/symvirt/symvirt/hostd/lowest"
)

// TestHashLowestHashesInAHelper: a state file's digest after its stream
// is computed by another process, from the file's start whatever the
// writer's offset, and equals its sha256; a file replaced at its path is
// refused.
func TestHashLowestHashesInAHelper(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	data := make([]byte, 3<<20+17)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	helper := 0
	lowest.TestHookStarted = func(pid int) { helper = pid }
	defer func() { lowest.TestHookStarted = nil }()
	fd, err := hashLowest(w)
	if err != nil {
		t.Fatal(err)
	}
	if helper == 0 || helper == os.Getpid() {
		t.Fatalf("hashed by process %d, this is %d: want a helper", helper, os.Getpid())
	}
	sum := sha256.Sum256(data)
	if fd.Size != int64(len(data)) || fd.SHA256 != hex.EncodeToString(sum[:]) || fd.Name != "state" {
		t.Fatalf("digest %+v, want %d bytes, sha256 %x", fd, len(data), sum)
	}
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("another file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if fd, err := hashLowest(w); err == nil {
		t.Fatalf("a file replaced at its path hashed as %+v", fd)
	}
}

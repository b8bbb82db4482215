package manifest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A RAM file's digest depends on its bytes only: the same bytes written
// dense (zeros and all) and sparse (holes) hash alike; a changed byte, a
// zero chunk turned into data or a different size hash differently.
func TestSparseDigest(t *testing.T) {
	for _, hash := range []string{ChunksSHA256, ChunksBLAKE3} {
		testSparseDigest(t, hash)
	}
	if _, err := NewChunkSums(Chunk, "md5"); !errors.Is(err, ErrChecksum) {
		t.Errorf("an unknown chunk hash: %v", err)
	}
}

func testSparseDigest(t *testing.T, hash string) {
	dir := t.TempDir()
	size := int64(5*Chunk + 4096)
	data := map[int64][]byte{Chunk / 2: []byte("symvirt"), 3 * Chunk: bytes.Repeat([]byte{7}, 5000), 5 * Chunk: {1}}
	write := func(name string, dense bool, size int64, change func(f *os.File)) string {
		path := filepath.Join(dir, name)
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if dense {
			f.Write(make([]byte, size))
		} else {
			f.Truncate(size)
		}
		for off, b := range data {
			f.WriteAt(b, off)
		}
		if change != nil {
			change(f)
		}
		sum, err := SparseDigest(f, size, hash)
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	sparse := write("sparse", false, size, nil)
	if dense := write("dense", true, size, nil); dense != sparse {
		t.Fatalf("dense %s, sparse %s: the same bytes", dense, sparse)
	}
	for name, change := range map[string]func(f *os.File){
		"byte changed":        func(f *os.File) { f.WriteAt([]byte("S"), Chunk/2) },
		"zero chunk has data": func(f *os.File) { f.WriteAt([]byte{1}, Chunk+9) },
		"data at the end":     func(f *os.File) { f.WriteAt([]byte{1}, size-1) },
	} {
		if got := write(name, false, size, change); got == sparse {
			t.Errorf("%s: same digest", name)
		}
	}
	if got := write("longer", false, size+4096, nil); got == sparse {
		t.Error("a longer file: same digest")
	}
}

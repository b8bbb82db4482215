package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/sentinel"
)

// A RAM file saved by SaveRAM and loaded by LoadRAM into a file that held
// other bytes, or only zeros, comes back byte for byte; the copy is
// sparse; a changed copy is refused.
func TestRAMFileRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	size := int64(9 * manifest.Chunk)
	ram := newFile(t, filepath.Join(dir, "vm.ram"), size)
	ram.WriteAt([]byte("guest kernel"), 4096)
	ram.WriteAt(bytes.Repeat([]byte{0xab}, 3*manifest.Chunk/2), 4*manifest.Chunk)
	ram.WriteAt(make([]byte, manifest.Chunk), 7*manifest.Chunk) // data, all zeros
	saved, _, err := SaveRAM(ctx, ram, filepath.Join(dir, "ram.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if st := stat(t, filepath.Join(dir, "ram.bin")); st.Blocks*512 > 3*manifest.Chunk {
		t.Errorf("the copy takes %d bytes of disk: not sparse", st.Blocks*512)
	}
	src, err := os.Open(filepath.Join(dir, "ram.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := newFile(t, filepath.Join(dir, "new.ram"), size)
	dst.WriteAt(bytes.Repeat([]byte{0xff}, int(size)), 0)
	if err := LoadRAM(ctx, src, dst, saved, false); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(ram.Name())
	if got, _ := os.ReadFile(dst.Name()); !bytes.Equal(got, want) {
		t.Fatal("the loaded RAM differs from the saved one")
	}
	if st := stat(t, dst.Name()); st.Blocks*512 < size {
		t.Errorf("a RAM file all allocated (a pooled one) has %d of %d bytes allocated after the load: emptied", st.Blocks*512, size)
	}
	// One with holes is emptied first, then loaded.
	holed := newFile(t, filepath.Join(dir, "holed.ram"), size)
	holed.WriteAt(bytes.Repeat([]byte{0xff}, int(size/2)), size/4)
	if err := LoadRAM(ctx, src, holed, saved, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(holed.Name()); !bytes.Equal(got, want) {
		t.Fatal("the RAM loaded into a file with holes differs from the saved one")
	}
	// One of zeros, all allocated (a pooled file, its QEMU waiting), is
	// loaded as it is: exact, and still allocated.
	zeros := newFile(t, filepath.Join(dir, "zeros.ram"), size)
	if err := syscall.Fallocate(int(zeros.Fd()), 0, 0, size); err != nil {
		t.Fatal(err)
	}
	if err := LoadRAM(ctx, src, zeros, saved, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(zeros.Name()); !bytes.Equal(got, want) {
		t.Fatal("the RAM loaded into a file of zeros differs from the saved one")
	}
	if st := stat(t, zeros.Name()); st.Blocks*512 < size {
		t.Errorf("a file of zeros has %d of %d bytes allocated after the load", st.Blocks*512, size)
	}
	f, _ := os.OpenFile(src.Name(), os.O_WRONLY, 0)
	f.WriteAt([]byte("evil"), 4*manifest.Chunk+100)
	f.Close()
	if err := LoadRAM(ctx, src, dst, saved, false); !errors.Is(err, sentinel.ErrChecksum) {
		t.Fatalf("changed copy: %v, want ErrChecksum", err)
	}
}

func newFile(t *testing.T, path string, size int64) *os.File {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

func stat(t *testing.T, path string) *syscall.Stat_t {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// shmDir is a directory on /dev/shm, where guest RAM files are (the
// mapped copy reads tmpfs pages in place), or a temporary one elsewhere.
func shmDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "symvirt-ramtest-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// populatedRAM is a RAM file as hostd populates it (every page written,
// no holes), holding data in chunks 1 (a page), 4 and 5 and the short last
// chunk, or with a hole in chunk 6 when holed.
func populatedRAM(t *testing.T, holed bool) *os.File {
	size := int64(8*manifest.Chunk + 3*4096)
	ram := newFile(t, filepath.Join(shmDir(t), "vm.ram"), size)
	if _, err := ram.WriteAt(make([]byte, size), 0); err != nil {
		t.Fatal(err)
	}
	ram.WriteAt([]byte("guest kernel"), manifest.Chunk+4096)
	ram.WriteAt(bytes.Repeat([]byte{0xab}, 3*manifest.Chunk/2), 4*manifest.Chunk)
	ram.WriteAt([]byte{1}, size-1)
	if holed {
		if err := syscall.Fallocate(int(ram.Fd()), 0x3 /* PUNCH_HOLE|KEEP_SIZE */, 6*manifest.Chunk, manifest.Chunk/2); err != nil {
			t.Skip("no holes here:", err)
		}
		ram.WriteAt([]byte("after the hole"), 6*manifest.Chunk+manifest.Chunk*3/4)
	}
	return ram
}

// dataChunks are the chunks of f where SEEK_DATA finds data.
func dataChunks(t *testing.T, f *os.File, size int64) (chunks []int64) {
	for i := int64(0); i*manifest.Chunk < size; i++ {
		if !manifest.IsHole(f, i*manifest.Chunk, min(manifest.Chunk, size-i*manifest.Chunk)) {
			chunks = append(chunks, i)
		}
	}
	return chunks
}

// A populated RAM file (no holes) saved by SaveRAM through its mapping:
// the copy is byte for byte the file, holds data only in the chunks that
// are not zeros, and has the digest the read path (SaveByRead) and
// manifest.SparseDigest give the same file; LoadRAM takes it. A chunk
// with a hole is copied by reading it (its pages stay holes in the RAM
// file: a fault would allocate them).
func TestSaveRAMMappedPopulatedFile(t *testing.T) {
	for _, holed := range []bool{false, true} {
		ram := populatedRAM(t, holed)
		st, _ := ram.Stat()
		allocated := stat(t, ram.Name()).Blocks
		dir := t.TempDir()
		mapped, _, err := SaveRAM(context.Background(), ram, filepath.Join(dir, "mapped.bin"))
		if err != nil {
			t.Fatal(err)
		}
		SaveByRead = true
		read, _, err := SaveRAM(context.Background(), ram, filepath.Join(dir, "read.bin"))
		SaveByRead = false
		if err != nil {
			t.Fatal(err)
		}
		want, err := manifest.SparseDigest(ram, st.Size(), manifest.SaveChunks)
		if err != nil {
			t.Fatal(err)
		}
		if mapped.SHA256 != read.SHA256 || mapped.SHA256 != want || mapped.Size != st.Size() || mapped.Chunks != manifest.SaveChunks {
			t.Fatalf("holed %v: mapped copy %+v, read copy %+v, SparseDigest %s", holed, mapped, read, want)
		}
		orig, _ := os.ReadFile(ram.Name())
		for _, name := range []string{"mapped.bin", "read.bin"} {
			got, _ := os.ReadFile(filepath.Join(dir, name))
			if !bytes.Equal(got, orig) {
				t.Fatalf("holed %v: %s differs from the RAM file", holed, name)
			}
		}
		copyFile, _ := os.Open(filepath.Join(dir, "mapped.bin"))
		defer copyFile.Close()
		wantChunks := []int64{1, 4, 5, 8}
		if holed {
			wantChunks = []int64{1, 4, 5, 6, 8}
		}
		if got := dataChunks(t, copyFile, st.Size()); !slices.Equal(got, wantChunks) {
			t.Errorf("holed %v: the copy has data in chunks %v, want %v (the chunks that are not zeros)", holed, got, wantChunks)
		}
		if after := stat(t, ram.Name()).Blocks; after != allocated {
			t.Errorf("holed %v: the RAM file had %d blocks, %d after its save", holed, allocated, after)
		}
		dst := newFile(t, filepath.Join(dir, "new.ram"), st.Size())
		if err := LoadRAM(context.Background(), copyFile, dst, mapped, false); err != nil {
			t.Fatal(err)
		}
	}
}

// A checkpoint's RAM file loads by its manifest's digest whichever chunk
// hash that names: sha256 (the checkpoints written before BLAKE3) or
// BLAKE3; a digest of the other hash, or a chunk hash LoadRAM does not
// know, is refused.
func TestLoadRAMTakesEitherChunkHash(t *testing.T) {
	ram := populatedRAM(t, false)
	dir := t.TempDir()
	saved, _, err := SaveRAM(context.Background(), ram, filepath.Join(dir, "ram.bin"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(filepath.Join(dir, "ram.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	digest := map[string]string{}
	for _, hash := range []string{manifest.ChunksSHA256, manifest.ChunksBLAKE3} {
		if digest[hash], err = manifest.SparseDigest(src, saved.Size, hash); err != nil {
			t.Fatal(err)
		}
	}
	if digest[saved.Chunks] != saved.SHA256 || digest[manifest.ChunksSHA256] == digest[manifest.ChunksBLAKE3] {
		t.Fatalf("saved %+v, digests %v", saved, digest)
	}
	fd := func(sum, hash string) manifest.FileDigest {
		return manifest.FileDigest{Size: saved.Size, SHA256: sum, Chunks: hash}
	}
	for _, c := range []struct {
		want manifest.FileDigest
		err  error
	}{
		{fd(digest[manifest.ChunksSHA256], manifest.ChunksSHA256), nil},
		{fd(digest[manifest.ChunksBLAKE3], manifest.ChunksBLAKE3), nil},
		{fd(digest[manifest.ChunksSHA256], manifest.ChunksBLAKE3), sentinel.ErrChecksum},
		{fd(digest[manifest.ChunksBLAKE3], "md5"), sentinel.ErrChecksum},
	} {
		dst := newFile(t, filepath.Join(t.TempDir(), "vm.ram"), saved.Size)
		if err := LoadRAM(context.Background(), src, dst, c.want, false); !errors.Is(err, c.err) {
			t.Errorf("chunks %q: %v, want %v", c.want.Chunks, err, c.err)
		}
	}
}

// A checkpoint's RAM file shorter than its manifest says is refused, even
// where what was cut off was zeros (the digest alone would not tell).
func TestLoadRAMRefusesShortCopy(t *testing.T) {
	ram := populatedRAM(t, false)
	dir := t.TempDir()
	saved, _, err := SaveRAM(context.Background(), ram, filepath.Join(dir, "ram.bin"))
	if err != nil {
		t.Fatal(err)
	}
	saved.Size -= 3 * 4096 // the copy cut back to 8 chunks, its manifest to match
	saved.SHA256, err = manifest.SparseDigest(ram, saved.Size, saved.Chunks)
	if err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(dir, "ram.bin"), 7*manifest.Chunk) // chunk 7 was zeros
	src, err := os.Open(filepath.Join(dir, "ram.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := newFile(t, filepath.Join(dir, "new.ram"), saved.Size)
	if err := LoadRAM(context.Background(), src, dst, saved, false); !errors.Is(err, sentinel.ErrChecksum) {
		t.Fatalf("a copy %d bytes short: %v, want ErrChecksum", saved.Size-7*manifest.Chunk, err)
	}
}

// A RAM file cut shorter while SaveRAM copies it (mapped, or read) fails
// the save with ErrRAMFile: its end is not taken for zeros.
func TestSaveRAMRefusesFileCutWhileCopied(t *testing.T) {
	for _, byRead := range []bool{false, true} {
		ram := populatedRAM(t, false)
		var once sync.Once
		testHookSaveChunk = func() { once.Do(func() { ram.Truncate(2 * manifest.Chunk) }) }
		SaveByRead = byRead
		_, _, err := SaveRAM(context.Background(), ram, filepath.Join(t.TempDir(), "ram.bin"))
		testHookSaveChunk, SaveByRead = nil, false
		if !errors.Is(err, sentinel.ErrRAMFile) {
			t.Fatalf("by read %v: %v, want ErrRAMFile", byRead, err)
		}
	}
}

// A read of a mapping past its file's end (SIGBUS) is an error, not the
// end of the process.
func TestFaultlessTurnsAFaultIntoAnError(t *testing.T) {
	f := newFile(t, filepath.Join(shmDir(t), "vm.ram"), 2*manifest.Chunk)
	mem, err := syscall.Mmap(int(f.Fd()), 0, 2*manifest.Chunk, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(mem)
	f.Truncate(4096)
	var b byte
	err = faultless(func() error { b = mem[manifest.Chunk]; return nil }, func() error { return sentinel.ErrRAMFile })
	if !errors.Is(err, sentinel.ErrRAMFile) {
		t.Fatalf("read past the end: %v (read %d), want the fault's error", err, b)
	}
}

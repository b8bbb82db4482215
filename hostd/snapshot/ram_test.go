package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/sentinel"
)

// A RAM file saved by SaveRAM and loaded by LoadRAM into a file that held
// other bytes (what a new QEMU wrote at its start) comes back byte for
// byte; the copy is sparse; a changed copy is refused.
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
	if err := LoadRAM(ctx, src, dst, saved); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(ram.Name())
	if got, _ := os.ReadFile(dst.Name()); !bytes.Equal(got, want) {
		t.Fatal("the loaded RAM differs from the saved one")
	}
	f, _ := os.OpenFile(src.Name(), os.O_WRONLY, 0)
	f.WriteAt([]byte("evil"), 4*manifest.Chunk+100)
	f.Close()
	if err := LoadRAM(ctx, src, dst, saved); !errors.Is(err, sentinel.ErrChecksum) {
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

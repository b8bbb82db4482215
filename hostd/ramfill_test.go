package hostd

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// TestPopulateFileKeepsDataAndAllocates: populating a sparse RAM file on
// /dev/shm allocates every page (so that QEMU's reads of them no longer
// do) and changes no byte, neither what was written before nor what a
// writer (QEMU's incoming stream) writes while it runs.
func TestPopulateFileKeepsDataAndAllocates(t *testing.T) {
	const size = 3*populateChunk + 4096 // a partial chunk too
	f, err := os.CreateTemp(qemu.ShmDir, "symvirt-populate-test-*.ram")
	if err != nil {
		t.Skipf("no %s: %v", qemu.ShmDir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if allocated(f.Name(), size) {
		t.Fatal("a new file is allocated already: the test shows nothing")
	}
	marks := map[int64][]byte{0: []byte("first"), populateChunk + 100: []byte("middle"), size - 6: []byte("last!!")}
	for off, b := range marks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	// A writer beside it, as QEMU's incoming stream is.
	done := make(chan error, 1)
	during := bytes.Repeat([]byte{0xa5}, 4096)
	go func() {
		var err error
		for off := int64(2 * 4096); off < 64*4096 && err == nil; off += 4096 {
			_, err = f.WriteAt(during, off)
		}
		done <- err
	}()
	n, err := populateFile(context.Background(), f, size)
	if err != nil {
		t.Skipf("populate: %v", err) // a kernel before 5.14
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n != size || !allocated(f.Name(), size) {
		t.Fatalf("populated %d of %d bytes; allocated: %v", n, size, allocated(f.Name(), size))
	}
	for off, b := range marks {
		got := make([]byte, len(b))
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("at %d: %q, want %q (%v)", off, got, b, err)
		}
	}
	got := make([]byte, 4096)
	for off := int64(2 * 4096); off < 64*4096; off += 4096 {
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, during) {
			t.Fatalf("the concurrent write at %d was changed", off)
		}
	}
	zero := make([]byte, 4096)
	if _, err := f.ReadAt(got, 2*populateChunk); err != nil || !bytes.Equal(got, zero) {
		t.Fatalf("a hole reads %x after populate, want zeros", got[:16])
	}
}

// TestPopulateFileStopsWithItsContext: a migration that ends stops it.
func TestPopulateFileStopsWithItsContext(t *testing.T) {
	f, err := os.CreateTemp(qemu.ShmDir, "symvirt-populate-test-*.ram")
	if err != nil {
		t.Skipf("no %s: %v", qemu.ShmDir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(4 * populateChunk); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := populateFile(ctx, f, 4*populateChunk); n != 0 || err != nil {
		t.Fatalf("populated %d bytes (%v) after its context ended", n, err)
	}
}

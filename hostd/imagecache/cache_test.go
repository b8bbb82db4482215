package imagecache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

const testChunk = 64 << 10

// testImage writes an image of n chunks (plus a short tail) where chunk i
// holds its number, leaving every third chunk a hole.
func testImage(t *testing.T, n int) (string, *Manifest, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if i%3 != 2 {
			fmt.Fprintf(at(f, int64(i)*testChunk), "chunk %08d", i)
		}
	}
	f.Truncate(int64(n)*testChunk + 1024)
	f.Close()
	m, err := Build("img", path, testChunk)
	if err != nil {
		t.Fatal(err)
	}
	_, id := m.Encode()
	return path, m, id
}

func at(f *os.File, off int64) *offWriter { return &offWriter{f, off} }

type offWriter struct {
	f   *os.File
	off int64
}

func (w *offWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	return n, err
}

// cacheSource serves another Cache, counting the chunks it gave; bad
// flips a byte of each chunk it serves (a lying peer).
type cacheSource struct {
	name  string
	c     *Cache
	calls atomic.Int64
	bad   bool
	dead  bool
}

func (s *cacheSource) Name() string { return s.name }
func (s *cacheSource) Chunk(ctx context.Context, i int) ([]byte, error) {
	s.calls.Add(1)
	if s.dead {
		return nil, errors.New("connection refused")
	}
	b, err := s.c.Chunk(ctx, i)
	if err == nil && s.bad {
		b[0] ^= 0xff
	}
	return b, err
}
func (s *cacheSource) Manifest(context.Context) ([]byte, error) {
	data, _ := s.c.m.Encode()
	return data, nil
}

func seed(t *testing.T, n int) (*Cache, string) {
	path, m, id := testImage(t, n)
	c, err := OpenSeed(path, m, id, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

func read(t *testing.T, c *Cache, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := c.ReadAt(context.Background(), b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// A host reads through its cache: missing chunks come from the source
// once, holes never; the bitmap survives a reopen (no refetch), a bitmap
// of another image is discarded with its data.
func TestCacheFetchesOnceAndPersists(t *testing.T) {
	s, path := seed(t, 12)
	src := &cacheSource{name: "seed", c: s}
	dir := t.TempDir()
	c, err := Open(dir, s.m, s.id, NewSources([]Source{src}, slog.Default()), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(path)
	got := read(t, c, testChunk-10, 3*testChunk) // chunks 0..3, 2 is a hole
	if !bytes.Equal(got, want[testChunk-10:4*testChunk-10]) {
		t.Fatal("cache read differs from the image")
	}
	read(t, c, 0, 100)
	if n := src.calls.Load(); n != 3 {
		t.Fatalf("%d chunk fetches, want 3 (chunk 2 is a hole, chunk 0 read twice)", n)
	}
	if st := c.Stats(); st.Held != 4 || st.Fetched != 3*testChunk {
		t.Fatalf("stats %+v", st)
	}
	c.Close()
	c, err = Open(dir, s.m, s.id, NewSources([]Source{src}, slog.Default()), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, c, 0, 4*testChunk), want[:4*testChunk]) || src.calls.Load() != 3 {
		t.Fatalf("after reopen: %d fetches, want still 3", src.calls.Load())
	}
	tail := read(t, c, s.m.Size-1024, 1024)
	if !bytes.Equal(tail, want[len(want)-1024:]) {
		t.Fatal("short last chunk differs")
	}
	c.Close()
	other := *s.m
	other.Name = "other"
	_, oid := other.Encode()
	c, err = Open(dir, &other, oid, NewSources(nil, slog.Default()), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st := c.Stats(); st.Held != 0 {
		t.Fatalf("another image's bitmap was kept: %+v", st)
	}
}

// Attack: a peer serves a chunk whose bytes are not the image's. The
// cache refuses it, counts it, takes the chunk from the next source and
// never marks the bad bytes held; with only the liar, the read fails.
func TestCacheRefusesCorruptedChunk(t *testing.T) {
	s, path := seed(t, 4)
	liar := &cacheSource{name: "liar", c: s, bad: true}
	honest := &cacheSource{name: "seed", c: s}
	c, err := Open(t.TempDir(), s.m, s.id, NewSources([]Source{liar}, slog.Default()), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.ReadAt(context.Background(), make([]byte, 10), 0)
	if !errors.Is(err, ErrDigest) || !errors.Is(err, ErrNoSource) || c.Held(0) {
		t.Fatalf("read through a lying peer: %v (held %v)", err, c.Held(0))
	}
	c.Sources().Set([]Source{liar, honest})
	want, _ := os.ReadFile(path)
	if got := read(t, c, 0, testChunk); !bytes.Equal(got, want[:testChunk]) {
		t.Fatal("read after fail-over differs from the image")
	}
	if st := c.Stats(); st.Rejected != 2 || st.Failovers != 2 {
		t.Fatalf("stats %+v: want 2 rejected chunks, 2 fail-overs", st)
	}
	if _, err := Decode([]byte(`{"name":"x"}`), s.id); !errors.Is(err, ErrDigest) {
		t.Fatalf("a manifest that is not the image's id: %v", err)
	}
}

// Re-parenting: the parent dies; the child takes chunks from the next
// ancestor, and the dead one is passed over (not asked first) afterwards.
func TestSourcesFailOverInOrder(t *testing.T) {
	s, _ := seed(t, 6)
	parent := &cacheSource{name: "parent", c: s, dead: true}
	grand := &cacheSource{name: "grandparent", c: s}
	c, err := Open(t.TempDir(), s.m, s.id, NewSources([]Source{parent, grand}, slog.Default()), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read(t, c, 0, 2*testChunk)
	read(t, c, 3*testChunk, testChunk)
	if parent.calls.Load() != 1 || grand.calls.Load() != 3 {
		t.Fatalf("parent asked %d times, grandparent %d; want 1 and 3", parent.calls.Load(), grand.calls.Load())
	}
	if got := c.Sources().order()[0].Name(); got != "grandparent" {
		t.Fatalf("first source after the parent failed: %s", got)
	}
}

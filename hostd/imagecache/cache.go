package imagecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// ErrRange: a read outside the image.
var ErrRange = errors.New("read outside the image")

// fillTimeout bounds one chunk's fetch over all its sources.
const fillTimeout = 2 * time.Minute

// Cache is one host's copy-on-read copy of an image (or, on a seed, the
// image itself with every chunk held).
type Cache struct {
	m    *Manifest
	id   string
	data *os.File
	bmp  *bitmap // nil on a seed
	src  *Sources
	log  *slog.Logger

	mu       sync.Mutex
	inflight map[int]*flight

	served, fetched, servedChunks atomic.Int64
}

type flight struct {
	done chan struct{}
	err  error
}

// Stats are a cache's counters.
type Stats struct {
	ID     string `json:"id"`
	Size   int64  `json:"size"`
	Chunk  int    `json:"chunk"`
	Chunks int    `json:"chunks"`
	Held   int    `json:"held"`
	Seed   bool   `json:"seed"`
	// Served: bytes sent to peers; Fetched: bytes taken from sources.
	Served       int64 `json:"served_bytes"`
	ServedChunks int64 `json:"served_chunks"`
	Fetched      int64 `json:"fetched_bytes"`
	Rejected     int64 `json:"rejected_chunks"`
	// Data: bytes of the image's chunks that are not all zeros.
	Data      int64 `json:"data_bytes"`
	Failovers int64 `json:"failovers"`
}

// OpenSeed serves the image file at path itself: every chunk is held.
func OpenSeed(path string, m *Manifest, id string, log *slog.Logger) (*Cache, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || st.Size() != m.Size {
		f.Close()
		return nil, fmt.Errorf("%s: size changed since registration: %w", path, ErrManifest)
	}
	return &Cache{m: m, id: id, data: f, src: NewSources(nil, log), log: log, inflight: map[int]*flight{}}, nil
}

// Open opens (or starts) the cache in dir, which only this host may
// write (0700): dir/data, sparse, and dir/bitmap of the chunks held. A
// bitmap of another image is discarded with the data.
func Open(dir string, m *Manifest, id string, src *Sources, log *slog.Logger) (*Cache, error) {
	f, err := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return open(dir, f, m, id, src, log)
}

// open starts the cache of dir's bitmap on the data file f.
func open(dir string, f *os.File, m *Manifest, id string, src *Sources, log *slog.Logger) (*Cache, error) {
	bmp, kept, err := openBitmap(filepath.Join(dir, "bitmap"), id, m.Chunks())
	if err == nil && !kept {
		err = f.Truncate(0) // stale chunks must read as holes
	}
	if err == nil {
		err = f.Truncate(m.Size)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("image cache %s: %w", dir, err)
	}
	return &Cache{m: m, id: id, data: f, bmp: bmp, src: src, log: log, inflight: map[int]*flight{}}, nil
}

// Close closes the cache's files.
func (c *Cache) Close() error {
	if c.bmp != nil {
		c.bmp.close()
	}
	return c.data.Close()
}

// Manifest is the cache's image manifest.
func (c *Cache) Manifest() *Manifest { return c.m }

// Sources are where the cache fetches missing chunks.
func (c *Cache) Sources() *Sources { return c.src }

// Size is the image's size.
func (c *Cache) Size() int64 { return c.m.Size }

// Stats reads the cache's counters.
func (c *Cache) Stats() Stats {
	s := Stats{ID: c.id, Size: c.m.Size, Chunk: c.m.Chunk, Chunks: c.m.Chunks(), Seed: c.bmp == nil,
		Served: c.served.Load(), ServedChunks: c.servedChunks.Load(), Fetched: c.fetched.Load(),
		Rejected: c.src.rejected.Load(), Failovers: c.src.failovers.Load(), Data: c.m.DataBytes()}
	s.Held = s.Chunks
	if c.bmp != nil {
		s.Held = c.bmp.count()
	}
	return s
}

// ReadAt reads the image, fetching the chunks it spans that are missing.
func (c *Cache) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > c.m.Size {
		return fmt.Errorf("%d bytes at %d of %d: %w", len(p), off, c.m.Size, ErrRange)
	}
	if len(p) == 0 {
		return nil
	}
	first, last := int(off/int64(c.m.Chunk)), int((off+int64(len(p))-1)/int64(c.m.Chunk))
	for i := first; i <= last; i++ {
		if err := c.ensure(ctx, i); err != nil {
			return err
		}
	}
	_, err := c.data.ReadAt(p, off)
	return err
}

// Chunk returns chunk i for a peer, fetching it first if missing.
func (c *Cache) Chunk(ctx context.Context, i int) ([]byte, error) {
	if i < 0 || i >= c.m.Chunks() {
		return nil, fmt.Errorf("chunk %d of %d: %w", i, c.m.Chunks(), ErrRange)
	}
	off, n := c.m.Span(i)
	buf := make([]byte, n)
	if err := c.ReadAt(ctx, buf, off); err != nil {
		return nil, err
	}
	c.served.Add(int64(n))
	c.servedChunks.Add(1)
	return buf, nil
}

// Held reports whether chunk i is here.
func (c *Cache) Held(i int) bool { return c.bmp == nil || c.bmp.has(i) }

// ensure makes chunk i present, fetching it once however many readers
// want it at the same time.
func (c *Cache) ensure(ctx context.Context, i int) error {
	if c.Held(i) {
		return nil
	}
	c.mu.Lock()
	if c.bmp.has(i) {
		c.mu.Unlock()
		return nil
	}
	f, waiting := c.inflight[i]
	if !waiting {
		f = &flight{done: make(chan struct{})}
		c.inflight[i] = f
	}
	c.mu.Unlock()
	if !waiting {
		// The fetch serves every waiter: it outlives the first caller.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fillTimeout)
		f.err = c.fill(fctx, i)
		cancel()
		c.mu.Lock()
		delete(c.inflight, i)
		c.mu.Unlock()
		close(f.done)
	}
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fill fetches, checks, writes and syncs chunk i, then marks it held.
func (c *Cache) fill(ctx context.Context, i int) error {
	if !c.m.zero(i) {
		data, err := c.src.Fetch(ctx, c.m, i)
		if err != nil {
			return err
		}
		off, _ := c.m.Span(i)
		if _, err := c.data.WriteAt(data, off); err != nil {
			return fmt.Errorf("image cache: chunk %d: %w", i, err)
		}
		if err := c.data.Sync(); err != nil {
			return fmt.Errorf("image cache: chunk %d: %w", i, err)
		}
		c.fetched.Add(int64(len(data)))
	}
	return c.bmp.set(i)
}

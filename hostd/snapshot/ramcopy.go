package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/sentinel"
	"golang.org/x/sys/unix"
)

// copiers is how many chunks are copied and hashed at once.
const copiers = 2

// TestHookRAMChunk, when set (tests only), runs once after LoadRAM
// copied a chunk: a test changes the file there, as an attacker would
// while a restore runs.
var TestHookRAMChunk func()

// testHookSaveChunk, when set (tests only), runs after SaveRAM copied a
// chunk.
var testHookSaveChunk func()

// SaveByRead (the bench only) saves a RAM file as before its mapped copy,
// to measure one beside the other: SaveRAM reads each chunk into a
// buffer, as LoadRAM does, instead of testing it in place in the file's
// mapping, and SaveShared copies it after QEMU's state, not beside it.
var SaveByRead bool

// sparseCopy is a copy of the chunks of src that are not zeros into dst
// at their offsets, every chunk hashed into sums.
type sparseCopy struct {
	src, dst *os.File
	sums     *manifest.ChunkSums
	data     dataMap // src's, as the copy began
	// mem, when set, is src mapped read-only: a chunk that is all data
	// (a populated RAM file has no holes) is tested for zeros, hashed and
	// written from there, not copied into a buffer first. A chunk with a
	// hole is read (a read fault on a tmpfs hole would allocate the page;
	// read(2) does not). Only for a file nobody else writes: what is
	// hashed is read again to be written.
	mem []byte
	// writeback starts each chunk's write-out to disk at once, so that
	// the final fsync has little left to wait for.
	writeback bool
	// short is the error of a src that ends before its size.
	short error
	// clearSkipped: dst was not emptied, and each chunk not copied (src
	// has zeros there) is cleared in dst unless it is zeros already
	// (tested in dstMem, dst mapped read-only: its pages are allocated,
	// and nobody else writes them while QEMU waits for its state).
	clearSkipped bool
	dstMem       []byte
	after        func() // after each chunk copied
}

// saveCopy is the copy of a stopped VM's RAM file, mapped unless
// SaveByRead.
func saveCopy(src, dst *os.File, size int64) (sparseCopy, func(), error) {
	sums, err := manifest.NewChunkSums(size, manifest.SaveChunks)
	if err != nil {
		return sparseCopy{}, nil, err
	}
	c := sparseCopy{src: src, dst: dst, sums: sums, writeback: true, short: sentinel.ErrRAMFile, after: func() {}}
	if hook := testHookSaveChunk; hook != nil {
		c.after = hook
	}
	if SaveByRead || size == 0 {
		return c, func() {}, nil
	}
	mem, err := unix.Mmap(int(src.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return c, nil, fmt.Errorf("map %s: %w", src.Name(), err)
	}
	c.mem = mem
	return c, func() { unix.Munmap(mem) }, nil
}

// loadCopy is the copy of a checkpoint's RAM file src, as want (its
// manifest's entry) has it, read into private buffers (whoever can write
// the checkpoint store could change the file between a chunk's hash and
// its write).
func loadCopy(src, dst *os.File, want manifest.FileDigest) (sparseCopy, error) {
	sums, err := manifest.NewChunkSums(want.Size, want.Chunks)
	if err != nil {
		return sparseCopy{}, fmt.Errorf("%s: %w", src.Name(), err)
	}
	c := sparseCopy{src: src, dst: dst, sums: sums, short: sentinel.ErrChecksum, after: func() {}}
	if hook := TestHookRAMChunk; hook != nil {
		var once sync.Once
		c.after = func() { once.Do(hook) }
	}
	return c, nil
}

// run copies every chunk, copiers at a time.
func (c sparseCopy) run(ctx context.Context) error {
	c.data = mapData(c.src, c.sums.Size())
	var next atomic.Int64
	errs := make([]error, copiers)
	var wg sync.WaitGroup
	for w := range copiers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := int(next.Add(1) - 1); i < c.sums.Chunks() && errs[w] == nil; i = int(next.Add(1) - 1) {
				errs[w] = c.guarded(ctx, i, &buf)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// guarded copies chunk i, turning a fault in src's mapping (the file was
// cut shorter while copied: SIGBUS) into an error.
func (c sparseCopy) guarded(ctx context.Context, i int, buf *[]byte) error {
	if c.mem == nil {
		return c.chunk(ctx, i, buf)
	}
	return faultless(func() error { return c.chunk(ctx, i, buf) }, func() error {
		return fmt.Errorf("%s ends before chunk %d: cut while copied: %w", c.src.Name(), i, c.short)
	})
}

// faultless runs do, and fault if do touched a mapping where there is no
// file any more (a fault would otherwise end the process).
func faultless(do, fault func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); !ok {
				panic(r)
			}
			err = fault()
		}
	}()
	return do()
}

// chunk copies chunk i.
func (c sparseCopy) chunk(ctx context.Context, i int, buf *[]byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	off := int64(i) * manifest.Chunk
	n := min(manifest.Chunk, c.sums.Size()-off)
	any, all := c.data.cover(off, n)
	if !any {
		return c.clearDst(off, n, buf)
	}
	data, err := c.read(off, n, all, buf)
	if err != nil {
		return err
	}
	if manifest.IsZero(data) {
		return c.clearDst(off, n, buf)
	}
	c.sums.Set(i, data)
	if _, err := c.dst.WriteAt(data, off); err != nil {
		return fmt.Errorf("write %s: %w", c.dst.Name(), err)
	}
	if c.writeback {
		unix.SyncFileRange(int(c.dst.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
	}
	c.after()
	return nil
}

// clearDst zeroes dst's n bytes at off, if clearSkipped and they are not
// zeros (buf, a chunk's buffer, is free by then).
func (c sparseCopy) clearDst(off, n int64, buf *[]byte) error {
	if !c.clearSkipped || manifest.IsZero(c.dstMem[off:off+n]) {
		return nil
	}
	if *buf == nil {
		*buf = make([]byte, manifest.Chunk)
	}
	b := (*buf)[:n]
	clear(b)
	if _, err := c.dst.WriteAt(b, off); err != nil {
		return fmt.Errorf("write %s: %w", c.dst.Name(), err)
	}
	return nil
}

// read is src's n bytes at off: in its mapping if they are all data, or
// read into buf.
func (c sparseCopy) read(off, n int64, all bool, buf *[]byte) ([]byte, error) {
	if c.mem != nil && all {
		return c.mem[off : off+n], nil
	}
	if *buf == nil {
		*buf = make([]byte, manifest.Chunk)
	}
	m, err := c.src.ReadAt((*buf)[:n], off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", c.src.Name(), err)
	}
	if int64(m) < n {
		return nil, fmt.Errorf("%s ends at %d, before its size %d: %w", c.src.Name(), off+int64(m), c.sums.Size(), c.short)
	}
	return (*buf)[:n], nil
}

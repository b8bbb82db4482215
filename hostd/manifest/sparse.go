package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"
)

const (
	// RAMName is a checkpoint's guest RAM file (role "ram"), there when
	// the VM's RAM is a shared file hostd copied itself: its state file
	// then holds no RAM.
	RAMName = "ram.bin"
	// Chunk is the unit of a RAM file's digest.
	Chunk = 1 << 20
)

// A RAM file's digest (SparseDigest) is the sha256 of its size and of the
// digest of each of its Chunk-byte chunks in order: a chunk of zeros has
// a known digest, so that a hole (most of an idle guest's RAM) is neither
// read nor hashed, and the digest is the same whatever holes a file
// system kept. Each chunk is hashed with the file's chunk hash
// (FileDigest.Chunks).
const (
	// ChunksSHA256 ("" in a manifest): each chunk's sha256, as the
	// checkpoints written before ChunksBLAKE3 have it.
	ChunksSHA256 = ""
	// ChunksBLAKE3: each chunk's BLAKE3-256.
	ChunksBLAKE3 = "blake3"
)

// SaveChunks is the chunk hash a new RAM file's digest uses: the faster
// of the two on this processor (BLAKE3 with AVX2's vectors, else sha256,
// which x86's and arm64's SHA extensions speed up), on a copy that every
// checkpoint and restore waits for.
var SaveChunks = func() string {
	if runtime.GOARCH == "amd64" && cpu.X86.HasAVX2 {
		return ChunksBLAKE3
	}
	return ChunksSHA256
}()

// chunkHash is one of the chunk hashes: its function and its digest of a
// chunk of zeros.
type chunkHash struct {
	sum  func([]byte) [32]byte
	zero func() [32]byte
}

func newChunkHash(sum func([]byte) [32]byte) chunkHash {
	return chunkHash{sum: sum, zero: sync.OnceValue(func() [32]byte { return sum(make([]byte, Chunk)) })}
}

var chunkHashes = map[string]chunkHash{ChunksSHA256: newChunkHash(sha256.Sum256), ChunksBLAKE3: newChunkHash(blake3.Sum256)}

// ChunkSums holds a sparse file's chunk digests as they are computed
// (by any number of workers, one chunk each).
type ChunkSums struct {
	size int64
	name string // the chunk hash's, as FileDigest.Chunks has it
	hash chunkHash
	sums [][32]byte
}

// NewChunkSums is for a file of size bytes whose chunks hash (a Chunks*
// name) hashes, every chunk zero until set.
func NewChunkSums(size int64, hash string) (*ChunkSums, error) {
	h, ok := chunkHashes[hash]
	if !ok {
		return nil, fmt.Errorf("RAM file chunk hash %q: want %q or none (sha256): %w", hash, ChunksBLAKE3, ErrChecksum)
	}
	c := &ChunkSums{size: size, name: hash, hash: h, sums: make([][32]byte, (size+Chunk-1)/Chunk)}
	for i := range c.sums {
		c.sums[i] = h.zero()
	}
	return c, nil
}

// Hash is the chunk hash's name (FileDigest.Chunks).
func (c *ChunkSums) Hash() string { return c.name }

// Size is the file's size.
func (c *ChunkSums) Size() int64 { return c.size }

// Chunks is how many chunks the file has.
func (c *ChunkSums) Chunks() int { return len(c.sums) }

// Set records chunk i's bytes (the last chunk may be short; a short
// chunk counts as padded with zeros, as the file's end is a multiple of
// a page anyway).
func (c *ChunkSums) Set(i int, data []byte) {
	if len(data) == Chunk {
		c.sums[i] = c.hash.sum(data)
		return
	}
	padded := make([]byte, Chunk)
	copy(padded, data)
	c.sums[i] = c.hash.sum(padded)
}

// Sum is the file's digest.
func (c *ChunkSums) Sum() string {
	h := sha256.New()
	binary.Write(h, binary.LittleEndian, c.size)
	for _, s := range c.sums {
		h.Write(s[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// IsHole reports whether f has no data in [off, off+n): SEEK_DATA finds
// none before its end (a file system without holes says there is data).
func IsHole(f *os.File, off, n int64) bool {
	next, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true // no data after off
	}
	return err == nil && next >= off+n
}

// zeroPage is what IsZero compares with, a page at a time: small enough
// to stay in the first-level cache, and bytes.Equal compares with the
// processor's widest vectors.
var zeroPage = make([]byte, 4096)

// IsZero reports whether b is all zeros.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// SparseDigest hashes f's first size bytes as a RAM file whose chunks
// hash hashes (see above), reading only what is not a hole.
func SparseDigest(f *os.File, size int64, hash string) (string, error) {
	sums, err := NewChunkSums(size, hash)
	if err != nil {
		return "", err
	}
	buf := make([]byte, Chunk)
	for i := range sums.Chunks() {
		off := int64(i) * Chunk
		n := min(Chunk, size-off)
		if IsHole(f, off, n) {
			continue
		}
		m, err := f.ReadAt(buf[:n], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("read %s: %w", f.Name(), err)
		}
		clear(buf[m:n]) // past a short file's end
		if !IsZero(buf[:n]) {
			sums.Set(i, buf[:n])
		}
	}
	return sums.Sum(), nil
}

package imagecache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Bounds on what a manifest may describe.
const (
	ChunkMin     = 4 << 10
	ChunkMax     = 4 << 20
	ChunkDefault = 256 << 10
	SizeMax      = int64(1) << 40
	// ManifestMax bounds a manifest read from a peer.
	ManifestMax = 64 << 20
)

var (
	// ErrDigest: bytes do not match the digest they must have.
	ErrDigest = errors.New("digest mismatch")
	// ErrManifest: a manifest is malformed or out of bounds.
	ErrManifest = errors.New("invalid image manifest")
)

// Manifest describes an image: its size, its chunk size and each chunk's
// sha256 (hex).
type Manifest struct {
	Name    string   `json:"name"`
	Size    int64    `json:"size"`
	Chunk   int      `json:"chunk"`
	Digests []string `json:"digests"`
}

// Chunks is how many chunks the image has.
func (m *Manifest) Chunks() int { return int((m.Size + int64(m.Chunk) - 1) / int64(m.Chunk)) }

// Span is where chunk i lies in the image.
func (m *Manifest) Span(i int) (off int64, n int) {
	off = int64(i) * int64(m.Chunk)
	return off, int(min(int64(m.Chunk), m.Size-off))
}

// Check verifies that data is chunk i.
func (m *Manifest) Check(i int, data []byte) error {
	if i < 0 || i >= len(m.Digests) {
		return fmt.Errorf("chunk %d of %d: %w", i, len(m.Digests), ErrManifest)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != m.Digests[i] {
		return fmt.Errorf("chunk %d (%d bytes): %w", i, len(data), ErrDigest)
	}
	return nil
}

// Zero reports whether chunk i is all zeros (nothing to fetch).
func (m *Manifest) Zero(i int) bool { return m.zero(i) }

func (m *Manifest) zero(i int) bool {
	_, n := m.Span(i)
	return m.Digests[i] == zeroDigest(n)
}

// zeroDigests memoizes zeroDigest by chunk length: every chunk's test
// would otherwise hash a chunk of zeros.
var zeroDigests sync.Map

func zeroDigest(n int) string {
	if d, ok := zeroDigests.Load(n); ok {
		return d.(string)
	}
	sum := sha256.Sum256(make([]byte, n))
	d := hex.EncodeToString(sum[:])
	zeroDigests.Store(n, d)
	return d
}

// DataBytes is the size of the image's chunks that are not all zeros:
// what a whole copy of it moves.
func (m *Manifest) DataBytes() int64 {
	var n int64
	for i := range m.Chunks() {
		if !m.zero(i) {
			_, l := m.Span(i)
			n += int64(l)
		}
	}
	return n
}

func (m *Manifest) validate() error {
	switch {
	case m.Chunk < ChunkMin || m.Chunk > ChunkMax || m.Chunk&(m.Chunk-1) != 0:
		return fmt.Errorf("chunk size %d (a power of two in %d..%d): %w", m.Chunk, ChunkMin, ChunkMax, ErrManifest)
	case m.Size <= 0 || m.Size > SizeMax || m.Size%512 != 0:
		// QEMU's NBD client stalls on an export that ends mid-sector.
		return fmt.Errorf("size %d (a multiple of 512 up to %d): %w", m.Size, SizeMax, ErrManifest)
	case len(m.Digests) != m.Chunks():
		return fmt.Errorf("%d digests for %d chunks: %w", len(m.Digests), m.Chunks(), ErrManifest)
	}
	for i, d := range m.Digests {
		if b, err := hex.DecodeString(d); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("digest %d: %w", i, ErrManifest)
		}
	}
	return nil
}

// Encode is the manifest's canonical bytes; ID is their sha256.
func (m *Manifest) Encode() ([]byte, string) {
	data, _ := json.Marshal(m)
	sum := sha256.Sum256(data)
	return data, hex.EncodeToString(sum[:])
}

// Decode accepts manifest bytes only if their sha256 is id.
func Decode(data []byte, id string) (*Manifest, error) {
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != id {
		return nil, fmt.Errorf("manifest: sha256 is not the image's id %s: %w", id, ErrDigest)
	}
	var m Manifest
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	return &m, m.validate()
}

// Build reads the image at path and lists its chunks' digests.
func Build(name, path string, chunk int) (*Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	m := &Manifest{Name: name, Size: st.Size(), Chunk: chunk}
	if m.Size <= 0 || m.Size > SizeMax || m.Size%512 != 0 || chunk < ChunkMin || chunk > ChunkMax {
		return nil, m.validate()
	}
	buf, zeros := make([]byte, chunk), make([]byte, chunk)
	zero := map[int]string{}
	for i := range m.Chunks() {
		off, n := m.Span(i)
		if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if bytes.Equal(buf[:n], zeros[:n]) {
			if zero[n] == "" {
				zero[n] = zeroDigest(n)
			}
			m.Digests = append(m.Digests, zero[n])
			continue
		}
		sum := sha256.Sum256(buf[:n])
		m.Digests = append(m.Digests, hex.EncodeToString(sum[:]))
	}
	return m, m.validate()
}

// DigestOf is data's digest as a manifest lists it.
func DigestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

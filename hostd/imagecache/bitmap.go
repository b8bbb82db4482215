package imagecache

import (
	"bytes"
	"fmt"
	"math/bits"
	"os"
	"sync"
)

// bitmap is the persisted set of chunks a cache holds: a header naming
// the image (its manifest's id) then one bit per chunk. A bit is written
// only after its chunk's bytes were synced, so a crash loses at most
// chunks that are fetched again.
type bitmap struct {
	mu   sync.Mutex
	f    *os.File
	hdr  int64
	bits []byte
	n    int
}

func header(id string) []byte { return []byte("symvirt-image-bitmap " + id + "\n") }

// openBitmap loads path if it is this image's (kept) or starts it empty.
func openBitmap(path, id string, n int) (*bitmap, bool, error) {
	hdr := header(id)
	size := (n + 7) / 8
	b := &bitmap{hdr: int64(len(hdr)), n: n}
	data, err := os.ReadFile(path)
	kept := err == nil && len(data) == len(hdr)+size && bytes.Equal(data[:len(hdr)], hdr)
	if kept {
		b.bits = data[len(hdr):]
	} else {
		b.bits = make([]byte, size)
		fresh := append(hdr, b.bits...)
		if err := os.WriteFile(path, fresh, 0o600); err != nil {
			return nil, false, err
		}
	}
	b.f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, false, err
	}
	if !kept {
		if err := b.f.Sync(); err != nil {
			b.f.Close()
			return nil, false, err
		}
	}
	return b, kept, nil
}

func (b *bitmap) has(i int) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return i >= 0 && i < b.n && b.bits[i/8]&(1<<(i%8)) != 0
}

// set marks chunk i held and writes its byte of the bitmap.
func (b *bitmap) set(i int) error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if i < 0 || i >= b.n {
		return fmt.Errorf("bitmap: chunk %d of %d: %w", i, b.n, ErrRange)
	}
	b.bits[i/8] |= 1 << (i % 8)
	_, err := b.f.WriteAt(b.bits[i/8:i/8+1], b.hdr+int64(i/8))
	return err
}

func (b *bitmap) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, x := range b.bits {
		n += bits.OnesCount8(x)
	}
	return n
}

func (b *bitmap) close() error { return b.f.Close() }

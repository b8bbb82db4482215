package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// pipeSize is what a state pipe holds (the kernel's default 64 KiB makes
// QEMU and hostd take turns every 64 KiB).
const pipeSize = 1 << 20

// widen grows a pipe to pipeSize, where the kernel allows it (else it
// stays as it is: only slower).
func widen(f *os.File) {
	unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeSize)
}

// bgHash hashes buffers on a goroutine of its own, beside what their
// reader does with them next (sha256 is about as slow as the disk here: in
// turn, they would add up). A buffer from buf is reused once hashed.
type bgHash struct {
	free, in chan []byte
	out      chan string
}

func newBgHash() *bgHash {
	const buffers = 4
	b := &bgHash{free: make(chan []byte, buffers), in: make(chan []byte, buffers), out: make(chan string)}
	for range buffers {
		b.free <- make([]byte, pipeSize)
	}
	go func() {
		h := sha256.New()
		for p := range b.in {
			h.Write(p)
			b.free <- p[:cap(p)]
		}
		b.out <- hex.EncodeToString(h.Sum(nil))
	}()
	return b
}

// buf is a buffer to read into; add(p) hashes p, a prefix of it.
func (b *bgHash) buf() []byte  { return <-b.free }
func (b *bgHash) add(p []byte) { b.in <- p }

// sum waits for the hash of everything added.
func (b *bgHash) sum() string {
	close(b.in)
	return <-b.out
}

// hashedCopy copies src to dst until src ends and hashes every byte read.
func hashedCopy(dst io.Writer, src io.Reader) (n int64, sum string, err error) {
	h := newBgHash()
	for {
		buf := h.buf()
		m, rerr := src.Read(buf)
		if m > 0 {
			h.add(buf[:m])
			_, err = dst.Write(buf[:m])
			n += int64(m)
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			err = errors.Join(err, rerr)
		}
		if rerr != nil || err != nil {
			return n, h.sum(), err
		}
	}
}

// writeback writes to a file and starts each write's write-out to disk at
// once, so that the fsync that completes a checkpoint has little left to
// wait for.
type writeback struct {
	f   *os.File
	off int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if n > 0 {
		unix.SyncFileRange(int(w.f.Fd()), w.off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
		w.off += int64(n)
	}
	return n, err
}

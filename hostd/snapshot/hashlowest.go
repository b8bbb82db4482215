package snapshot

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/hostd/lowest"
	"github.com/symvirt/symvirt/hostd/manifest"
	"golang.org/x/sys/unix"
)

// hashTask hashes a live save's state file after its stream in a helper
// process (package lowest): a goroutine of hostd hashing at nice 19 held
// off the garbage collector's stop-the-world for as long as it waited for
// a CPU, which stopped all of hostd.
const hashTask = "hash-state"

func init() { lowest.Serve(hashTask, hashHelper) }

// hashHelper hashes f from its start to its end, whatever its offset, and
// returns "SIZE SHA256".
func hashHelper(f *os.File, _ string) (string, error) {
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, math.MaxInt64))
	if err != nil {
		return "", fmt.Errorf("read back %s: %w", f.Name(), err)
	}
	return fmt.Sprintf("%d %x", n, h.Sum(nil)), nil
}

// hashLowest is the digest of w (a state file open for writing), computed
// by a helper at the lowest priority from the same file opened for
// reading.
func hashLowest(w *os.File) (manifest.FileDigest, error) {
	fd := manifest.FileDigest{Name: filepath.Base(w.Name())}
	r, err := reopenRead(w)
	if err != nil {
		return fd, err
	}
	defer r.Close()
	out, err := lowest.Run(context.Background(), hashTask, r, "")
	if err != nil {
		return fd, err
	}
	if _, err := fmt.Sscanf(out, "%d %64s", &fd.Size, &fd.SHA256); err != nil || len(fd.SHA256) != 2*sha256.Size {
		return fd, fmt.Errorf("hash helper: %q: want its size and sha256", out)
	}
	return fd, nil
}

// reopenRead opens w's file again, read-only, and checks that it is
// still the file w has open.
func reopenRead(w *os.File) (*os.File, error) {
	r, err := os.OpenFile(w.Name(), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	var a, b unix.Stat_t
	if err := errors.Join(unix.Fstat(int(w.Fd()), &a), unix.Fstat(int(r.Fd()), &b)); err != nil || a.Dev != b.Dev || a.Ino != b.Ino {
		r.Close()
		return nil, fmt.Errorf("%s is no longer the file written (%v)", w.Name(), err)
	}
	return r, nil
}

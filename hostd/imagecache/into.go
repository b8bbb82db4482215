package imagecache

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// OpenInto starts a cache in dir whose chunks are written, once checked,
// into f instead of dir/data: a new, empty file of the caller's that is
// the image's only copy on this host (a fetched template's RAM file,
// which its clones map). dir's bitmap is made anew, since one left there
// described another file. The caller must not write f while the cache
// is open, and must not reopen dir with Open: its bitmap is f's.
func OpenInto(dir string, f *os.File, m *Manifest, id string, src *Sources, log *slog.Logger) (*Cache, error) {
	for _, old := range []string{"bitmap", "data"} {
		if err := os.Remove(filepath.Join(dir, old)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("image cache %s: %w", dir, err)
		}
	}
	if st, err := f.Stat(); err != nil || st.Size() != 0 {
		return nil, fmt.Errorf("image cache %s: %s is not a new, empty file: %w", dir, f.Name(), fs.ErrExist)
	}
	return open(dir, f, m, id, src, log)
}

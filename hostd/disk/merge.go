package disk

import (
	"context"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/internal/atomicfile"
)

// Merge makes the qcow2 image img a delta over backing ("": standalone)
// instead of over its present backing file, which is about to go: what
// img read through the old backing and differs from the new one is copied
// into it (qemu-img rebase in safe mode). It works on a copy renamed over
// img when whole, so a crash leaves img as it was.
func Merge(ctx context.Context, img, backing string) error {
	tmp := filepath.Join(filepath.Dir(img), "."+filepath.Base(img)+".merge")
	os.Remove(tmp)
	err := copyNew(img, tmp)
	if err == nil {
		// Safe mode opens the backing files as named from tmp's directory,
		// img's own.
		err = Rebase(ctx, tmp, backing, false)
	}
	if err == nil {
		err = syncFile(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, img)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(img))
}

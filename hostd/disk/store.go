package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/internal/atomicfile"
)

// Store writes the frozen image into dst (new) as format, synced, and
// returns its digest. With parent "" it is the whole disk (a raw image
// byte for byte, anything else flattened); otherwise f.Path is an overlay
// made at the cut of the checkpoint whose disk is parent (a qcow2 named
// relative to dst's directory), and dst is that overlay, whose clusters
// are exactly those written since, over parent.
func Store(ctx context.Context, f Frozen, dst, parent, format string) (manifest.FileDigest, error) {
	var err error
	switch {
	case parent != "":
		err = copyNew(f.Path, dst)
		if err == nil {
			err = Rebase(ctx, dst, parent, true)
		}
	case f.Format == format && format == "raw":
		err = copyNew(f.Path, dst)
	default:
		// -U: QEMU holds the chain open; the frozen layers do not change.
		err = run(ctx, "convert", "-U", "-f", f.Format, "-O", format, f.Path, dst)
	}
	if err == nil {
		err = syncFile(dst)
	}
	if err != nil {
		removeQuiet(dst)
		return manifest.FileDigest{}, err
	}
	fd, err := manifest.HashFile(dst)
	fd.Role, fd.ID = "disk", f.ID
	return fd, err
}

// Rebase points the qcow2 image at backing ("": none). Unsafe only
// rewrites the header (the contents are the same over either backing);
// safe copies into img what differs between its old and its new backing.
func Rebase(ctx context.Context, img, backing string, unsafe bool) error {
	args := []string{"rebase", "-q", "-f", "qcow2"}
	if unsafe {
		args = append(args, "-u")
	}
	args = append(args, "-b", backing)
	if backing != "" {
		args = append(args, "-F", "qcow2")
	}
	return run(ctx, append(args, img)...)
}

// Convert writes the whole disk that img (qcow2, with its chain) is into
// dst (new), a standalone qcow2, synced.
func Convert(ctx context.Context, img, dst string) error {
	if err := run(ctx, "convert", "-f", "qcow2", "-O", "qcow2", img, dst); err != nil {
		removeQuiet(dst)
		return err
	}
	return syncFile(dst)
}

// Chain lists the files of img's backing chain, img first (qemu-img info
// --backing-chain; -U: QEMU may hold them).
func Chain(ctx context.Context, img string) ([]string, error) {
	out, err := output(ctx, "info", "-U", "--backing-chain", "--output=json", img)
	if err != nil {
		return nil, err
	}
	var infos []struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", img, err)
	}
	var files []string
	for _, i := range infos {
		files = append(files, i.Filename)
	}
	return files, nil
}

func copyNew(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = errors.Join(f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

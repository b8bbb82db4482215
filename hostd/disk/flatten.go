package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/symvirt/symvirt/qmp"
)

// Flatten commits the layers of the running disk id from frozen down to
// root into root (block-commit of an intermediate layer: the VM runs on,
// on its active overlay, now right over root), then removes their files.
// root is never removed: it is the disk as it was given (or restored).
func Flatten(ctx context.Context, mon *qmp.Client, id, root, frozen string) error {
	if sameFile(root, frozen) {
		return nil
	}
	files, err := Chain(ctx, frozen)
	if err != nil {
		return err
	}
	nodes, err := mon.QueryNamedBlockNodes(ctx)
	if err != nil {
		return err
	}
	blocks, err := mon.QueryBlock(ctx)
	if err != nil {
		return err
	}
	dev, ok := deviceOf(blocks, id)
	top, okTop := nodeOf(nodes, frozen)
	base, okBase := nodeOf(nodes, root)
	if !ok || !okTop || !okBase {
		return fmt.Errorf("disk %q: flatten %s into %s: %w", id, frozen, root, ErrNoDevice)
	}
	if err := mon.BlockCommit(ctx, "commit-"+id, dev.Inserted.NodeName, top, base); err != nil {
		return fmt.Errorf("disk %q: commit %s into %s: %w", id, frozen, root, err)
	}
	for _, f := range files {
		if sameFile(f, root) {
			break
		}
		os.Remove(f)
	}
	return nil
}

// nodeOf is the format node (not its file node) that opened path.
func nodeOf(nodes []qmp.BlockNode, path string) (string, bool) {
	for _, n := range nodes {
		if n.Drv != "file" && sameFile(n.File, path) {
			return n.NodeName, true
		}
	}
	return "", false
}

func sameFile(a, b string) bool { return filepath.Clean(a) == filepath.Clean(b) }

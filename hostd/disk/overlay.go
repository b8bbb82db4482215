package disk

import (
	"context"
	"strconv"
)

// CreateOverlay makes a new qcow2 image at path of size bytes on backing
// (a file name, an nbd+unix:// URI or a json: name) of backingFormat, without opening
// the backing file (-u): it takes milliseconds whatever the image's size.
func CreateOverlay(ctx context.Context, path, backing, backingFormat string, size int64) error {
	return run(ctx, "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", backingFormat, path, strconv.FormatInt(size, 10))
}

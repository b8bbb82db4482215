package hostd

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/symvirt/symvirt/hostd/lowest"
)

// populateTask populates a RAM file beside its running VM in a helper
// process (package lowest): the madvise holds its caller's mmap lock
// while it faults pages in, and on a thread of hostd at nice 19 it held
// hostd's for as long as it waited for a CPU.
const populateTask = "populate-ram"

func init() { lowest.Serve(populateTask, populateHelper) }

// populateHelper populates f's first size bytes (arg) and returns how many
// it did.
func populateHelper(f *os.File, arg string) (string, error) {
	size, err := strconv.ParseInt(arg, 10, 64)
	if err != nil || size <= 0 {
		return "", fmt.Errorf("size %q: want the file's size in bytes", arg)
	}
	n, err := populateFile(context.Background(), f, size)
	return strconv.FormatInt(n, 10), err
}

// populateLowest populates size bytes of f in a helper at the lowest
// priority; ctx's end kills it. It returns how many bytes the helper
// populated.
func populateLowest(ctx context.Context, f *os.File, size int64) (int64, error) {
	out, err := lowest.Run(ctx, populateTask, f, strconv.FormatInt(size, 10))
	n, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	return n, err
}

package snapshot

import (
	"errors"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

// dataMap is where a file has data (not holes): sorted, disjoint
// [start, end) ranges. It is found once per copy, a SEEK_DATA and a
// SEEK_HOLE per range: on tmpfs, SEEK_HOLE walks the file's pages up to
// the next hole, so asking it for every chunk of a file without holes (a
// populated RAM file) would walk the rest of the file each time.
type dataMap [][2]int64

// mapData maps f's first size bytes. A file system that cannot tell
// says all of it is data.
func mapData(f *os.File, size int64) dataMap {
	var m dataMap
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= size) {
			break // holes to the end
		}
		var hole int64
		if err == nil {
			hole, err = unix.Seek(fd, data, unix.SEEK_HOLE)
		}
		if err != nil {
			return append(m, [2]int64{off, size})
		}
		hole = min(hole, size)
		if hole <= data {
			hole = size // a file system that answers oddly: data, to be safe
		}
		m = append(m, [2]int64{data, hole})
		off = hole
	}
	return m
}

// cover reports whether [off, off+n) has any data, and whether it is all
// data.
func (m dataMap) cover(off, n int64) (any, all bool) {
	i := sort.Search(len(m), func(i int) bool { return m[i][1] > off })
	if i == len(m) || m[i][0] >= off+n {
		return false, false
	}
	return true, m[i][0] <= off && m[i][1] >= off+n
}

package snapshot

import (
	"path/filepath"
	"testing"

	"github.com/symvirt/symvirt/hostd/manifest"
)

// A file's data map, found once, tells a chunk that is all holes, all
// data, or both, as SEEK_DATA would for each chunk.
func TestDataMapCoversChunks(t *testing.T) {
	const c = manifest.Chunk
	f := newFile(t, filepath.Join(shmDir(t), "vm.ram"), 6*c)
	f.WriteAt(make([]byte, 2*c), c) // chunks 1, 2: data
	f.WriteAt([]byte{1}, 4*c+c/2)   // chunk 4: a page of data
	m := mapData(f, 6*c)
	for i, want := range [][2]bool{{false, false}, {true, true}, {true, true}, {false, false}, {true, false}, {false, false}} {
		if any, all := m.cover(int64(i)*c, c); any != want[0] || all != want[1] {
			t.Errorf("chunk %d: data %v, all data %v; want %v (map %v)", i, any, all, want, m)
		}
		if hole := manifest.IsHole(f, int64(i)*c, c); hole == want[0] {
			t.Errorf("chunk %d: IsHole %v, the map says data %v", i, hole, want[0])
		}
	}
	if m := mapData(f, 2*c+4096); len(m) != 1 || m[0] != [2]int64{c, 2*c + 4096} {
		t.Errorf("the first 2 chunks and a page: %v, want data from chunk 1 to the end", m)
	}
}

package snapshot

import (
	"os"
	"strconv"
)

// endPass is the sync of the dirty pages (QEMU's MIGRATION_PASS, the
// first at the copy's start) that ends the copy's first pass over all of
// RAM: from there an idle guest's few dirty pages fit in the downtime and
// QEMU stops the VM at once.
const endPass = 2

// endNice is the copy thread's nice value from endPass on. Its stop of
// the VM is a stretch in which it holds QEMU's big lock and waits for the
// vCPUs to park, then for a CPU of its own to send the last pages: at
// streamNice, behind four TCG vCPUs on two cores, that stretch alone
// paused a job's guests 20 ms more than QEMU's own downtime. The copy
// left after the first pass is small, so it goes first from there.
// SYMVIRT_PRECOPY_END_NICE (-20..19) overrides it; 19 is the copy at
// streamNice to its end.
var endNice = envNice("SYMVIRT_PRECOPY_END_NICE", snapshotNice)

func envNice(name string, def int) int {
	n, err := strconv.Atoi(os.Getenv(name))
	if err != nil || n < -20 || n > 19 {
		return def
	}
	return n
}

// nearEnd raises the copy thread once its first pass is over.
func (p *precopy) nearEnd() {
	if endNice == streamNice {
		return
	}
	renice(p.o.PID, "live_migration", endNice)
	p.o.Log.Debug("live checkpoint copy near its end: its thread goes first", "nice", endNice)
}

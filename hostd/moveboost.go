package hostd

import (
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// moveBoostNice is the QEMU threads' nice value while a VM that has just
// moved here is boosted (0 is every other QEMU's).
const moveBoostNice = -10

// boostAfterMove gives a VM about to be resumed here after a migration a
// head start: its QEMU's threads run at moveBoostNice for the host's
// migration_resume_boost, then as before. From the source's completion to
// the guest's first answers here is its clients' gap: QEMU loads the last
// of the stream, then the guest's first moments are its slowest (under
// TCG every block of code it runs is translated again, in a fresh QEMU);
// a lightly loaded service VM takes little from the others in that time.
func (vm *VM) boostAfterMove() {
	d := vm.h.cfg.MigrationResumeBoost
	if d <= 0 {
		return
	}
	p, err := vm.process()
	if err != nil {
		return
	}
	tids, err := qemu.Threads(p.PID)
	if err != nil || len(tids) == 0 {
		vm.log.Warn("no QEMU threads to boost", "err", err)
		return
	}
	for _, tid := range tids {
		if err := qemu.SetThreadNice(tid, moveBoostNice); err != nil {
			vm.log.Warn("QEMU not boosted", "err", err)
			return
		}
	}
	vm.log.Debug("boosted", "threads", len(tids), "for", d)
	time.AfterFunc(d, func() {
		// Listed again: a thread QEMU started meanwhile took the boost.
		tids, _ := qemu.Threads(p.PID) // a QEMU gone since: nothing to undo
		for _, tid := range tids {
			qemu.SetThreadNice(tid, 0)
		}
	})
}

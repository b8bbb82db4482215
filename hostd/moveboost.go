package hostd

import (
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// defaultMigrationIdleThread and defaultResumeBoost are hostd's
// migration_idle_thread and migration_resume_boost unless its config says
// otherwise: with both, one move at a time, the moved services' clients
// waited less (README, consolidation).
const (
	defaultMigrationIdleThread = true
	defaultResumeBoost         = 2 * time.Second
)

// moveDefaults fills in the settings that shorten a moved VM's pause.
func (c *Config) moveDefaults() {
	if c.MigrationIdleThread == nil {
		idle := defaultMigrationIdleThread
		c.MigrationIdleThread = &idle
	}
	if c.MigrationResumeBoost == nil {
		d := defaultResumeBoost
		c.MigrationResumeBoost = &d
	}
}

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
	d := defaultResumeBoost
	if b := vm.h.cfg.MigrationResumeBoost; b != nil {
		d = *b
	}
	if d <= 0 {
		return
	}
	p, err := vm.process()
	if err != nil {
		return
	}
	unboost := qemu.Boost(p.PID, moveBoostNice)
	vm.log.Debug("boosted", "for", d)
	time.AfterFunc(d, unboost)
}

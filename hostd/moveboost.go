package hostd

import (
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
)

// defaultMigrationIdleThread and defaultResumeBoost are hostd's
// migration_idle_thread and migration_resume_boost unless its config says
// otherwise: with the boost, a moved VM's vCPU waited 10-26 ms for a core
// in its first ~110 ms, against 30-67 without (README, consolidation).
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
	vm.realtimeAfterMove(p.PID)
}

// realtimeAfterMove runs a VM just moved here under SCHED_RR for the
// host's migration_resume_realtime: its first moments after the cont are
// CPU-bound (its vCPU ran ~90 ms of the first ~110 under TCG, and waited
// on the run queue for much of the rest despite the boost's nice value);
// a lightly loaded guest then sleeps, and a busy one gives the core back
// when the time is up.
func (vm *VM) realtimeAfterMove(pid int) {
	d := vm.h.cfg.MigrationResumeRealtime
	if d <= 0 {
		return
	}
	normal, err := qemu.Realtime(pid, moveRealtimePriority)
	if err != nil {
		vm.log.Warn("moved VM not run in real time", "err", err)
	}
	vm.log.Debug("realtime", "for", d)
	time.AfterFunc(d, normal)
}

// moveRealtimePriority is a moved VM's SCHED_RR priority: the lowest,
// above every normal thread and below anything the host runs in real time.
const moveRealtimePriority = 1

package hostd

import (
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/qmp"
)

// migrationIdleMax bounds how long a migration thread stays idle: on a
// host whose cores are all busy (a host a scale-out empties, say) an idle
// thread gets nothing, and the migration would not end.
const migrationIdleMax = 2 * time.Second

// migrationThreadPoll is how often the source looks for the thread a
// migrate command starts (it appears within milliseconds).
const migrationThreadPoll = 2 * time.Millisecond

// idleMigrationThread runs the VM's QEMU migration thread under
// SCHED_IDLE from the moment it appears until QEMU pauses the VM for the
// last round (its STOP event), or for migrationIdleMax, and then as
// before: during pre-copy the guest's vCPU, still serving, and the other
// VMs come first; the final copy, with the guest paused, is not left
// waiting for them. On unless the host's migration_idle_thread is false.
// stop ends the watch (call it once the stream is over, whatever its
// outcome).
func (vm *VM) idleMigrationThread(mon *qmp.Client) (stop func()) {
	if idle := vm.h.cfg.MigrationIdleThread; idle != nil && !*idle {
		return func() {}
	}
	p, err := vm.process()
	if err != nil {
		return func() {}
	}
	stops, unsubscribe := mon.Subscribe("STOP")
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		defer unsubscribe()
		tids := vm.waitMigrationThreads(p.PID, stops, done)
		for _, tid := range tids {
			if err := qemu.SetThreadIdle(tid, true); err != nil {
				vm.log.Warn("migration thread stays at its priority", "err", err)
			}
		}
		if len(tids) > 0 {
			vm.log.Debug("migration thread idle", "tids", tids)
		}
		select {
		case <-stops:
		case <-done:
		case <-time.After(migrationIdleMax):
		}
		for _, tid := range tids {
			qemu.SetThreadIdle(tid, false) // gone already: nothing to restore
		}
		if len(tids) > 0 {
			vm.log.Debug("migration thread back to normal")
		}
	}()
	return func() { close(done); <-finished }
}

// waitMigrationThreads polls for QEMU pid's migration threads until they
// appear, the VM stops or the watch ends (then none).
func (vm *VM) waitMigrationThreads(pid int, stops <-chan goqmp.Event, done <-chan struct{}) []int {
	tick := time.NewTicker(migrationThreadPoll)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-stops:
			return nil
		case <-tick.C:
		}
		if tids, err := qemu.MigrationThreads(pid); err != nil || len(tids) > 0 {
			return tids
		}
	}
}

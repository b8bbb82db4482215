package hostd

import (
	"context"
	"fmt"
	"time"
)

// complete ends the mirrors once the RAM migration completed (the
// source is paused): a ready mirror cancelled without force first brings
// its target in sync and reports COMPLETED; any other end fails the
// migration (its step rolls back, and the destination's copy goes).
func (m *mirror) complete(ctx context.Context) error {
	defer m.release(context.WithoutCancel(ctx))
	for _, id := range m.jobs {
		if err := m.mon.BlockJobCancel(ctx, id, false); err != nil {
			return fmt.Errorf("storage migration: end mirror %s: %w", id, err)
		}
	}
	if err := m.waitEnded(ctx); err != nil {
		return err
	}
	for _, id := range m.jobs {
		if why := m.ended[id]; why != "" {
			return fmt.Errorf("storage migration: mirror %s did not end in sync: %s: %w", id, why, ErrMigration)
		}
	}
	m.jobs = nil
	m.vm.log.Info("disks switched over with the migration")
	return nil
}

// abort stops the mirrors of a failed migration: the tunnel first, so
// that no request waits on the destination, then the jobs and nodes. The
// source's disks only ever were read; the guest's writes go on to them.
func (m *mirror) abort(ctx context.Context) {
	if m == nil {
		return
	}
	for _, c := range m.conns {
		c.Close()
	}
	for _, id := range m.jobs {
		m.mon.BlockJobCancel(ctx, id, true)
	}
	wctx, cancel := context.WithTimeout(ctx, mirrorCancelWait)
	defer cancel()
	if err := m.waitEnded(wctx); err != nil {
		m.vm.log.Warn("storage migration: mirrors did not end", "err", err)
	}
	m.jobs = nil
	m.release(ctx)
	m.vm.log.Info("storage migration stopped; the source keeps its disks")
}

// waitEnded waits until none of the jobs runs and records how each ended.
func (m *mirror) waitEnded(ctx context.Context) error {
	t := time.NewTicker(mirrorPoll)
	defer t.Stop()
	for {
		jobs, err := m.mon.QueryBlockJobs(ctx)
		if err != nil {
			return fmt.Errorf("storage migration: %w", err)
		}
		running := 0
		for _, id := range m.jobs {
			if _, ok := findJob(jobs, id); ok {
				running++
			}
		}
		if running == 0 {
			m.drainEvents()
			for _, id := range m.jobs {
				if _, ok := m.ended[id]; !ok {
					m.ended[id] = "ended unreported"
				}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("storage migration: %d mirror jobs still running: %w", running, ctx.Err())
		case <-t.C:
		}
	}
}

// release removes the NBD client nodes and the descriptors QEMU did not
// take, and closes the tunnel.
func (m *mirror) release(ctx context.Context) {
	for _, n := range m.nodes {
		if err := m.mon.BlockdevDel(ctx, n); err != nil {
			m.vm.log.Warn("storage migration: remove node", "node", n, "err", err)
		}
	}
	m.nodes = nil
	for _, fd := range m.fds {
		m.mon.CloseFD(ctx, fd) // consumed by blockdev-add, usually
	}
	m.fds = nil
	for _, c := range m.conns {
		c.Close()
	}
	m.unsub()
}

package snapshot

import (
	"context"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// resumeAfterPoint runs a VM that is still paused once its background
// snapshot's point is behind, as QEMU 7.2 does itself (it resumed any VM
// after the point; QEMU 10 keeps a VM that was paused before paused for
// the whole copy, measured, which made a VM stopped for its cut stand
// still until the copy's end). The point is behind once RAM pages flow:
// QEMU sends them only after it saved the devices and write-protected the
// RAM. A VM QEMU already runs is left alone; so is one whose copy ended
// first.
func resumeAfterPoint(ctx context.Context, mon *qmp.Client) {
	for ctx.Err() == nil {
		mi, err := mon.QueryMigrate(ctx)
		if err != nil || mi.Status != "active" && mi.Status != "setup" {
			return
		}
		if mi.Status == "active" && mi.RAM.Normal+mi.RAM.Duplicate > 0 {
			if st, err := mon.Status(ctx); err == nil && !st.Running {
				mon.Cont(ctx)
			}
			return
		}
		time.Sleep(time.Millisecond)
	}
}

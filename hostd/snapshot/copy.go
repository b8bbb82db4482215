package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/qmp"
)

// ErrNoHold: this QEMU cannot hold a copy short of its switchover (no
// switchover-ack capability: QEMU has it from 8.1); the point step then
// copies the VM whole.
var ErrNoHold = errors.New("no switchover hold in this QEMU")

// The return path's messages hostd sends as the copy's destination
// (QEMU's migration.c, enum mig_rp_message_type): each a big-endian
// 16-bit type and length, then the data.
const (
	rpShut          = 1 // data: a 32-bit error, 0 for none
	rpSwitchoverAck = 7
)

// settlePoll is how often Copy asks QEMU how far its copy is.
const settlePoll = 20 * time.Millisecond

// releaseMsg acks the switchover, then closes the return path (SHUT, no
// error): QEMU's return-path thread ends, and the copy's end does not wait
// for it.
var releaseMsg = []byte{0, rpSwitchoverAck, 0, 0, 0, rpShut, 0, 4, 0, 0, 0, 0}

// copyRun is a precopy under way: QEMU writes into one end of a socket
// pair, hostd drains the other into the state file.
type copyRun struct {
	conn     *os.File // hostd's end
	drained  chan error
	downtime int64 // QEMU's downtime-limit before the copy (ms)
	held     bool  // its switchover waits for release
	peak     int64 // the fastest the copy went (bytes/s)
	// switchoverBW: QEMU's avail-switchover-bandwidth was set to peak.
	switchoverBW bool
}

// Copy starts a's precopy while its job arms and returns once the VM's
// RAM is in the file and QEMU's passes over what the guest dirties are
// short. QEMU goes on copying what the guest dirties, its switchover held
// (QEMU's switchover-ack, hostd as the destination that acks) until
// Precopy releases it at the point: every VM of a job has its bulk behind
// before any point, and the points follow the point steps within
// milliseconds instead of each VM's whole copy.
// ErrNoHold: nothing started. On any other error the copy is cancelled
// and the caller disarms a (its file holds part of a stream).
func Copy(ctx context.Context, a *Armed, log *slog.Logger, pid int) error {
	if a.copy != nil {
		return nil
	}
	hold := map[string]bool{"return-path": true, "switchover-ack": true}
	if err := a.mon.MigrateSetCapabilities(ctx, hold); err != nil {
		return fmt.Errorf("%w: %v", ErrNoHold, err)
	}
	c, err := startCopy(ctx, a, log, pid)
	if err != nil {
		a.endHold()
		return err
	}
	c.held = true
	a.copy = c
	start := time.Now()
	mi, err := c.settle(ctx, a.mon)
	if err != nil {
		a.cancelCopy()
		return fmt.Errorf("live checkpoint copy: %w", err)
	}
	c.switchoverAt(ctx, a.mon)
	log.Info("live checkpoint copy held at its switchover", "took", time.Since(start), "passes", mi.RAM.DirtySyncCount,
		"remaining", mi.RAM.Remaining, "switchover_bandwidth", c.peak)
	return nil
}

// switchoverAt tells QEMU the bandwidth its switchover will have: the
// copy's peak. QEMU switches over once what is left fits in the
// downtime-limit at its bandwidth, which it measures as what it sent of
// late: a held copy sends only what the guest dirties, so that estimate
// is what the guest dirties, and what is left never fits (released, a
// guest under load took 250-400 ms and a longer downtime-limit to stop).
// QEMU before 8.2 has no such parameter; its copy keeps its own estimate.
func (c *copyRun) switchoverAt(ctx context.Context, mon *qmp.Client) {
	if c.peak <= 0 {
		return
	}
	err := mon.MigrateSetParameters(ctx, map[string]any{"avail-switchover-bandwidth": c.peak})
	c.switchoverBW = err == nil
}

// settle waits until the copy's bulk is over and its passes over the
// dirty pages are short: two syncs of QEMU's dirty log within one poll,
// or precopyPasses passes for a guest whose passes do not shrink. A copy
// released then stops its VM within about one such pass.
func (c *copyRun) settle(ctx context.Context, mon *qmp.Client) (qmp.MigrationInfo, error) {
	var last int64
	for {
		mi, err := mon.QueryMigrate(ctx)
		n := mi.RAM.DirtySyncCount
		c.peak = max(c.peak, int64(mi.RAM.MbPS*1e6/8))
		switch {
		case err != nil:
			return mi, err
		case mi.Status == "failed" || mi.Status == "cancelled":
			return mi, fmt.Errorf("%w: %s", qmp.ErrMigrationFailed, mi.ErrorDesc)
		case mi.Status == "completed", last >= 2 && n >= last+2, n >= 2+precopyPasses:
			return mi, nil
		}
		last = n
		select {
		case <-ctx.Done():
			return mi, ctx.Err()
		case err := <-c.drained:
			c.drained <- err
			return mi, fmt.Errorf("write stream: %v", err)
		case <-time.After(settlePoll):
		}
	}
}

// startCopy starts a precopy of a's VM through a socket pair drained into
// a's file, downtime-limit precopyDowntime.
func startCopy(ctx context.Context, a *Armed, log *slog.Logger, pid int) (*copyRun, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// Big enough for QEMU's writes not to wait on hostd's reads.
	unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
	unix.SetNonblock(fds[0], true) // on Go's poller: the drain waits there
	c := &copyRun{conn: os.NewFile(uintptr(fds[0]), "copy"), drained: make(chan error, 1)}
	theirs := os.NewFile(uintptr(fds[1]), "copy-qemu")
	// QEMU has its own: its close at the stream's end is our EOF.
	defer theirs.Close()
	var params struct {
		Downtime int64 `json:"downtime-limit"`
	}
	err = a.mon.GetFD(ctx, copyFD, theirs)
	if err == nil {
		err = a.mon.Execute(ctx, "query-migrate-parameters", nil, &params)
	}
	c.downtime = params.Downtime
	if err == nil {
		err = a.mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": precopyDowntime.Milliseconds()})
	}
	if err == nil {
		go func() { c.drained <- drainSocket(c.conn, a.f) }()
		if err = a.mon.Migrate(ctx, "fd:"+copyFD); err != nil {
			cleanup(func(ctx context.Context) error { return a.mon.CloseFD(ctx, copyFD) })
		}
	}
	if err != nil {
		c.conn.Close() // the drain ends
		c.restoreParams(a.mon)
		return nil, err
	}
	log.Info("live checkpoint copy started", "downtime_limit", precopyDowntime)
	// A guest waiting for a CPU is stalled, a copy that waits only longer.
	renice(pid, streamNice, qemu.MigrationThreadNames...)
	return c, nil
}

// release lets a held copy switch over: QEMU stops the VM at its next
// pass whose rest fits in the downtime-limit.
func (c *copyRun) release() error {
	if !c.held {
		return nil
	}
	_, err := c.conn.Write(releaseMsg)
	return err
}

func (c *copyRun) restoreParams(mon *qmp.Client) {
	if c.downtime > 0 {
		cleanup(func(ctx context.Context) error {
			return mon.MigrateSetParameters(ctx, map[string]any{"downtime-limit": c.downtime})
		})
	}
	if c.switchoverBW {
		cleanup(func(ctx context.Context) error {
			return mon.MigrateSetParameters(ctx, map[string]any{"avail-switchover-bandwidth": 0})
		})
	}
}

// cancelCopy ends a copy no point took: QEMU cancels it (the VM runs on;
// one the cut stopped stays stopped), the drain ends, the parameters are
// QEMU's again.
func (a *Armed) cancelCopy() {
	c := a.copy
	if c == nil {
		return
	}
	a.copy = nil
	cleanup(a.mon.MigrateCancel)
	select {
	case <-c.drained:
	case <-time.After(5 * time.Second):
	}
	c.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.mon.WaitMigration(ctx, 10*time.Millisecond, nil)
	c.restoreParams(a.mon)
	a.endHold()
}

// endHold turns the switchover hold off: a later migration to a real
// destination would wait for an ack that QEMU there does not send.
func (a *Armed) endHold() {
	cleanup(func(ctx context.Context) error {
		return a.mon.MigrateSetCapabilities(ctx, map[string]bool{"switchover-ack": false, "return-path": false})
	})
}

// Copying reports whether a's copy was started at the arm.
func (a *Armed) Copying() bool { return a.copy != nil }

// drainSocket copies the socket s into f (at f's offset) until EOF, by
// splice through a pipe: the stream does not pass through hostd's memory.
func drainSocket(s, f *os.File) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	defer pw.Close()
	widen(pw)
	rc, err := s.SyscallConn()
	if err != nil {
		return err
	}
	mid, out := int(pr.Fd()), int(f.Fd())
	for {
		var n int64
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			n, serr = unix.Splice(int(fd), nil, int(pw.Fd()), nil, pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			return serr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return err
		case serr != nil:
			return serr
		case n == 0:
			return nil
		}
		for n > 0 {
			m, err := unix.Splice(mid, nil, out, nil, int(n), unix.SPLICE_F_MOVE)
			if err != nil {
				return err
			}
			n -= m
		}
	}
}

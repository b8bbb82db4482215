package hostd

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/symvirt/symvirt/hostd/blockmirror"
	"github.com/symvirt/symvirt/hostd/migstream"
	"github.com/symvirt/symvirt/qmp"
)

// A migration with copy-storage takes the VM's disks along: the
// destination creates an empty image per disk and exports it over NBD
// (mirror_incoming.go); the source mirrors each disk into it
// (blockdev-mirror, write-blocking, so every guest write reaches both
// before it completes and the mirror converges however fast the guest
// writes) while nothing else happens, then pre-copies RAM with the mirror
// in sync; once the RAM migration completed (the source is paused) the
// ready mirrors are cancelled, which syncs their targets: the destination
// then holds the disks as they were at the switch-over. A failure before
// that cancels the mirrors; the source's disks were only ever read.

// CopyDisk is a disk the destination of a storage migration creates.
type CopyDisk struct {
	ID     string `json:"id"`
	Format string `json:"format"`
	Size   int64  `json:"size"` // virtual size in bytes
	node   string // the source's active node
}

const (
	mirrorPoll = 100 * time.Millisecond
	// mirrorCancelWait bounds the wait for cancelled jobs to end.
	mirrorCancelWait = 60 * time.Second
)

func mirrorJob(id string) string    { return "symvirt-mirror-" + id }
func mirrorTarget(id string) string { return "symvirt-target-" + id }
func mirrorFD(id string) string     { return "symvirt-nbd-" + id }

// copiesStorage says whether a migration of the VM takes its disks
// along: when asked, when this host's disks are local (local_disks), or
// when a disk lives in hostd's state directory (a restored VM's), which
// no other host sees.
func (vm *VM) copiesStorage(asked bool) bool {
	spec := vm.Spec()
	if len(spec.Disks) == 0 {
		return false
	}
	if asked || vm.h.cfg.LocalDisks {
		return true
	}
	for _, d := range spec.Disks {
		if rel, err := filepath.Rel(vm.h.cfg.StateDir, d.Path); err == nil && filepath.IsLocal(rel) {
			return true
		}
	}
	return false
}

// copyDisks lists the VM's disks with their virtual sizes and the nodes
// their devices write to (the active layer, an overlay after a checkpoint:
// the mirror copies the whole chain into one image).
func (vm *VM) copyDisks(ctx context.Context, mon *qmp.Client) ([]CopyDisk, error) {
	blocks, err := mon.QueryBlock(ctx)
	if err != nil {
		return nil, fmt.Errorf("vm %q: storage migration: %w", vm.name, err)
	}
	var disks []CopyDisk
	for _, d := range vm.Spec().Disks {
		b, ok := diskBackend(blocks, d.ID)
		if !ok || b.Inserted.Image.VirtualSize <= 0 {
			return nil, fmt.Errorf("vm %q: storage migration: disk %s has no device or no size: %w", vm.name, d.ID, ErrMigration)
		}
		disks = append(disks, CopyDisk{ID: d.ID, Format: d.Format, Size: b.Inserted.Image.VirtualSize, node: b.Inserted.NodeName})
	}
	return disks, nil
}

// diskBackend finds the backend of disk id's virtio-blk device (dev-ID).
func diskBackend(blocks []qmp.BlockInfo, id string) (qmp.BlockInfo, bool) {
	for _, b := range blocks {
		if b.Inserted != nil && (b.QDev == "dev-"+id || strings.Contains(b.QDev, "/dev-"+id+"/")) {
			return b, true
		}
	}
	return qmp.BlockInfo{}, false
}

// waitDiskJobs waits until no checkpoint's disk store or flatten holds
// the VM's chains (a commit job would refuse the mirror).
func (vm *VM) waitDiskJobs(ctx context.Context) error {
	for !vm.disks.flat.TryLock() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %q: storage migration: waiting for the disks' flatten: %w", vm.name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	vm.disks.flat.Unlock()
	return nil
}

// mirror is a storage migration's mirror jobs on the source.
type mirror struct {
	vm     *VM
	mon    *qmp.Client
	events <-chan goqmp.Event
	unsub  func()
	fds    []string // passed to QEMU, maybe not consumed
	nodes  []string // NBD client nodes added
	jobs   []string // mirror jobs started
	conns  []net.Conn
	ended  map[string]string // job -> how it ended ("" ok)
}

// startMirror connects one NBD client node per disk to the
// destination's exports (through blockmirror's tunnel) and starts a
// mirror job into each.
func (vm *VM) startMirror(ctx context.Context, mon *qmp.Client, inc IncomingResponse, dest string, disks []CopyDisk) (*mirror, error) {
	host, err := checkMigrationURI(inc.NBD, dest, vm.h.cfg.migrationPorts())
	if err != nil {
		return nil, err
	}
	var cfg *tls.Config
	if vm.h.cfg.migrationTLS() {
		if cfg, err = vm.h.migrationTLSConfig(false); err != nil {
			return nil, err
		}
		cfg.ServerName = host
	}
	m := &mirror{vm: vm, mon: mon, ended: map[string]string{}}
	m.events, m.unsub = mon.Subscribe("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
	addr := strings.TrimPrefix(inc.NBD, "tcp:")
	for _, d := range disks {
		if err := m.add(ctx, d, addr, cfg, inc.NBDToken); err != nil {
			m.abort(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("vm %q: storage migration: disk %s: %w", vm.name, d.ID, err)
		}
	}
	vm.log.Info("mirroring disks", "to", addr, "disks", len(disks), "tls", cfg != nil)
	return m, nil
}

// add mirrors disk d into the destination's export of the same name.
func (m *mirror) add(ctx context.Context, d CopyDisk, addr string, cfg *tls.Config, token string) error {
	id := d.ID
	conn, err := blockmirror.Connect(ctx, addr, cfg, token)
	if err != nil {
		return err
	}
	qemuEnd, ours, err := migstream.SocketPair()
	if err != nil {
		conn.Close()
		return err
	}
	m.conns = append(m.conns, conn, ours)
	blockmirror.Join(ours, conn)
	err = m.mon.GetFD(ctx, mirrorFD(id), qemuEnd)
	qemuEnd.Close()
	if err != nil {
		return err
	}
	m.fds = append(m.fds, mirrorFD(id))
	if err := m.mon.BlockdevAdd(ctx, qmp.NBDClientOverFD(mirrorTarget(id), mirrorFD(id), id)); err != nil {
		return err
	}
	m.nodes = append(m.nodes, mirrorTarget(id))
	err = m.mon.BlockdevMirror(ctx, qmp.MirrorOptions{JobID: mirrorJob(id), Device: d.node,
		Target: mirrorTarget(id), Sync: "full", CopyMode: "write-blocking"})
	if err != nil {
		return err
	}
	m.jobs = append(m.jobs, mirrorJob(id))
	return nil
}

// waitReady waits until every job has copied its whole disk (READY).
func (m *mirror) waitReady(ctx context.Context) error {
	start := time.Now()
	t := time.NewTicker(mirrorPoll)
	defer t.Stop()
	for {
		jobs, err := m.mon.QueryBlockJobs(ctx)
		if err != nil {
			return fmt.Errorf("storage migration: %w", err)
		}
		ready, done, total := 0, int64(0), int64(0)
		for _, id := range m.jobs {
			j, ok := findJob(jobs, id)
			if !ok {
				m.drainEvents()
				return fmt.Errorf("storage migration: mirror %s ended before it was in sync: %s: %w", id, m.ended[id], ErrMigration)
			}
			done, total = done+j.Offset, total+j.Len
			if j.Ready {
				ready++
			}
		}
		if ready == len(m.jobs) {
			m.vm.log.Info("disks in sync", "bytes", total, "took", time.Since(start))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("storage migration: %d/%d bytes mirrored: %w", done, total, ctx.Err())
		case <-t.C:
		}
	}
}

func findJob(jobs []qmp.BlockJob, id string) (qmp.BlockJob, bool) {
	for _, j := range jobs {
		if j.Device == id {
			return j, true
		}
	}
	return qmp.BlockJob{}, false
}

// drainEvents records how the jobs that ended did.
func (m *mirror) drainEvents() {
	for {
		select {
		case ev, ok := <-m.events:
			if !ok {
				return
			}
			id, _ := ev.Data["device"].(string)
			why := "cancelled"
			if ev.Event == "BLOCK_JOB_COMPLETED" {
				why, _ = ev.Data["error"].(string)
			}
			m.ended[id] = why
		default:
			return
		}
	}
}

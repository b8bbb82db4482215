package coord

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/names"
)

// Checkpoint is a job checkpoint: complete only when every VM's artifacts
// are written, synced and checksummed.
type Checkpoint struct {
	ID        string         `json:"id"`
	Job       string         `json:"job"`
	Op        string         `json:"op"`
	Status    string         `json:"status"` // in-progress | complete | failed
	CreatedAt time.Time      `json:"created_at"`
	Done      time.Time      `json:"done_at,omitzero"`
	VMs       []CheckpointVM `json:"vms"`
}

// CheckpointVM is one VM's part of a checkpoint.
type CheckpointVM struct {
	Name   string `json:"name"`
	Host   string `json:"host"` // where it ran at the cut
	Dir    string `json:"dir"`
	Digest string `json:"digest,omitempty"`
	// Pause (live): how long the VM's vCPUs stood still for its snapshot
	// point.
	Pause time.Duration `json:"pause_ns,omitempty"`
	// SnapshotAt (live): when it ran again after its snapshot point.
	SnapshotAt time.Time `json:"snapshot_at,omitzero"`
}

// Checkpoints lists checkpoints, newest first.
func (c *Coord) Checkpoints() ([]Checkpoint, error) {
	cks, err := listAll[Checkpoint](c.store, bucketCheckpoints)
	sort.Slice(cks, func(i, j int) bool { return cks[i].CreatedAt.After(cks[j].CreatedAt) })
	return cks, err
}

// CheckpointByID returns one checkpoint.
func (c *Coord) CheckpointByID(id string) (Checkpoint, error) {
	var ck Checkpoint
	err := c.store.Get(bucketCheckpoints, id, &ck)
	return ck, err
}

// RemoveCheckpoint deletes a checkpoint's files (through the hostds that
// wrote them) and its record.
func (c *Coord) RemoveCheckpoint(ctx context.Context, id string) error {
	ck, err := c.CheckpointByID(id)
	if err != nil {
		return err
	}
	if ck.Status == "in-progress" {
		return fmt.Errorf("checkpoint %s is being written: %w", id, ErrBusy)
	}
	for _, v := range ck.VMs {
		h, err := c.host(v.Host)
		if err != nil {
			return err
		}
		res, err := c.client(h.Addr).Step(ctx, hostd.StepRequest{ID: "rm/" + id + "/" + v.Name, Op: "rm-" + id,
			Kind: hostd.StepDeleteArtifacts, VM: v.Name, Save: &hostd.SaveArgs{Dir: v.Dir}})
		if err != nil {
			return err
		}
		if !res.OK {
			return fmt.Errorf("checkpoint %s: remove %s on %s: %s", id, v.Name, v.Host, res.Reason)
		}
	}
	return c.store.Delete(bucketCheckpoints, id)
}

// ckDir is where a VM's part of a checkpoint goes; built from names, it is
// checked to lie inside the checkpoint root.
func (c *Coord) ckDir(ck, vm string) (string, error) {
	dir, err := names.Join(c.cfg.CheckpointDir, ck, vm)
	if err != nil {
		return "", fmt.Errorf("checkpoint %s vm %q: %w: %v", ck, vm, ErrInvalid, err)
	}
	return dir, nil
}

// record is RecordCheckpoint: the catalog says the checkpoint is complete
// (with every VM's digest and, live, its snapshot point) or failed. It is
// idempotent: a retry or a recovery writes the same.
func (c *Coord) record(a machine.Action) error {
	var ck Checkpoint
	if err := c.store.Get(bucketCheckpoints, a.CheckpointID, &ck); err != nil {
		return err
	}
	ck.Status, ck.Done = a.Outcome, time.Now().UTC()
	for i := range ck.VMs {
		v := &ck.VMs[i]
		p := a.Points[v.Name]
		v.Digest, v.Pause, v.SnapshotAt = a.Digests[v.Name], p.Pause, p.SnapshotAt
	}
	return c.store.Put(bucketCheckpoints, ck.ID, ck)
}

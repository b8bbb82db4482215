package step

import (
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/internal/jsonapi"
	"github.com/symvirt/symvirt/qmp"
)

// Step kinds.
const (
	Prepare         = "prepare"
	Detach          = "detach"
	Stop            = "stop"
	Save            = "save"
	Migrate         = "migrate"
	Restore         = "restore"
	Attach          = "attach"
	Resume          = "resume"
	Abort           = "abort"
	Kill            = "kill"
	CancelMigrate   = "cancel-migrate"
	DeleteArtifacts = "delete-artifacts"
	// A live checkpoint's steps (coord/machine's Arm, Fence, Point,
	// WaitSave): the VM runs on through its copy.
	Arm      = "arm"
	Fence    = "fence"
	Point    = "point"
	WaitSave = "wait-save"
	// Launch (coord/machine's Launch, on a migration's source, beside its
	// Detach): the destination starts the VM's incoming QEMU for the
	// Migrate that follows (same arguments).
	Launch = "launch"
	// Replace is rejuvenate's step (coord/machine's Replace): a new QEMU
	// on the same shared memory takes over the stopped VM's device state.
	Replace = "replace"
)

// Request is one step of an operation: the header every step carries
// and the arguments of its kind, in the field named after it (the others
// stay nil). Validate says which kinds take which arguments.
type Request struct {
	ID   string `json:"id"` // the action id, for de-duplication
	Op   string `json:"op"` // the operation id, for closing and leases
	Kind string `json:"kind"`
	VM   string `json:"vm"`
	// Lease bounds how long the VM may stay paused, detached or in a
	// guest round without the operation's driver renewing it.
	Lease    time.Duration `json:"lease_ns,omitempty"`
	Deadline time.Time     `json:"deadline,omitzero"`
	// Epoch is the coordinator leader's fencing token (0: a single
	// coordinator, not fenced): a step from an older epoch is refused.
	Epoch int64 `json:"epoch,omitempty"`

	Prepare *PrepareArgs `json:"prepare,omitempty"` // prepare
	Save    *SaveArgs    `json:"save,omitempty"`    // save, arm, point, wait-save, restore, delete-artifacts
	Migrate *MigrateArgs `json:"migrate,omitempty"` // migrate, launch
	Resume  *ResumeArgs  `json:"resume,omitempty"`  // resume
	Replace *ReplaceArgs `json:"replace,omitempty"` // replace
	Fence   *FenceArgs   `json:"fence,omitempty"`   // fence
}

// FenceArgs scope a live checkpoint's network fence (nil: the whole VM).
type FenceArgs struct {
	// Peers are the MAC addresses of the NICs of the job's other VMs.
	// Given, the fence holds only the frames this VM receives from them,
	// from the fence step until this VM's own point, and every other frame
	// flows: a message from a VM past its point never reaches one before
	// its own, and peers outside the job see only the VM's pause. Empty:
	// all of the VM's traffic is held from its point until the job's
	// resume (what a job whose VMs reach each other through a router, not
	// on one Ethernet segment, needs).
	Peers []string `json:"peers,omitempty"`
}

// MaxFencePeers bounds FenceArgs.Peers.
const MaxFencePeers = 4096

// PrepareArgs: what the guest is told is coming.
type PrepareArgs struct {
	Operation string `json:"operation"` // checkpoint | migrate | restore | rejuvenate
	// Freeze (migrate): dependency-aware, see hostd.MigrateOptions.
	Freeze bool `json:"freeze,omitempty"`
}

// SaveArgs name the VM's checkpoint directory.
type SaveArgs struct {
	Dir string `json:"dir"`
	// Bandwidth caps a live save's stream (arm; bytes/s, 0: none).
	Bandwidth int64 `json:"bandwidth,omitempty"`
}

// MigrateArgs: where the VM goes.
type MigrateArgs struct {
	Dest string `json:"dest"` // the destination hostd's API address
	// Grant is the coordinator's signed permission for this host to hand
	// the VM to Dest; the source forwards it.
	Grant *Grant `json:"grant,omitempty"`
	// MaxBandwidth caps the stream in bytes/s (0: no practical cap).
	MaxBandwidth int64 `json:"max_bandwidth,omitempty"`
	// DowntimeLimit is QEMU's target for the final stop-and-copy.
	DowntimeLimit time.Duration `json:"downtime_limit_ns,omitempty"`
	// Capabilities are extra QEMU migration capabilities (auto-converge...).
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	// CopyStorage takes the VM's disks along (the hosts share no disk
	// storage): the destination creates them and the source mirrors them.
	CopyStorage bool `json:"copy_storage,omitempty"`
	// Progress, when set (hostd's own direct operations), observes QEMU's
	// figures while the stream runs and once more when it completed.
	Progress func(qmp.MigrationInfo) `json:"-"`
}

// ResumeArgs: what the guest is told happened.
type ResumeArgs struct {
	Outcome string `json:"outcome"`
}

// ReplaceArgs: the QEMU that takes the VM over.
type ReplaceArgs struct {
	// QEMU is the new binary (the upgrade case); empty keeps the VM's.
	QEMU string `json:"qemu,omitempty"`
	// Transferred, when set (hostd's own direct operations), is told how
	// many bytes of device state moved.
	Transferred func(int64) `json:"-"`
}

// Result answers a step.
type Result struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	Code   string `json:"code,omitempty"`
	// Digest identifies a saved checkpoint (sha256 of its manifest):
	// save, wait-save.
	Digest string `json:"digest,omitempty"`
	// Pause (wait-save): how long the vCPUs stood still for the snapshot
	// point.
	Pause time.Duration `json:"pause_ns,omitempty"`
	// SnapshotAt: when the vCPUs ran again after it (QEMU's clock).
	SnapshotAt time.Time `json:"snapshot_at,omitzero"`
	// Note says how a successful step departed from its request, e.g. a
	// live save taken stop-and-save, and why.
	Note string `json:"note,omitempty"`
}

// Forward reports whether kind moves an operation on: the kinds an
// operation's closing refuses.
func Forward(kind string) bool {
	switch kind {
	case Prepare, Detach, Stop, Save, Migrate, Restore, Arm, Fence, Point, Replace, Launch:
		return true
	}
	return false
}

// Validate checks the header and that the kind's arguments, and only
// those, are present.
func (r Request) Validate() error {
	if r.VM == "" || r.Op == "" || r.ID == "" {
		return fmt.Errorf("step: id, op and vm are required: %w", jsonapi.ErrInvalid)
	}
	want := ""
	switch r.Kind {
	case Prepare:
		want = "prepare"
	case Save, Arm, Point, WaitSave, Restore, DeleteArtifacts:
		want = "save"
	case Migrate, Launch:
		want = "migrate"
	case Resume:
		want = "resume"
	case Replace:
		want = "replace"
	case Detach, Stop, Fence, Attach, Abort, Kill, CancelMigrate:
	default:
		return fmt.Errorf("step kind %q: %w", r.Kind, jsonapi.ErrInvalid)
	}
	have := map[string]bool{"prepare": r.Prepare != nil, "save": r.Save != nil, "migrate": r.Migrate != nil,
		"resume": r.Resume != nil, "replace": r.Replace != nil}
	for k, ok := range have {
		if ok != (k == want) {
			return fmt.Errorf("step %s: arguments %q %s: %w", r.Kind, k, map[bool]string{true: "are not taken", false: "are missing"}[ok], jsonapi.ErrInvalid)
		}
	}
	if r.Save != nil && !filepath.IsAbs(r.Save.Dir) {
		return fmt.Errorf("step %s: dir %q is not an absolute path: %w", r.Kind, r.Save.Dir, jsonapi.ErrInvalid)
	}
	if r.Migrate != nil && r.Migrate.Dest == "" {
		return fmt.Errorf("step %s: dest is missing: %w", r.Kind, jsonapi.ErrInvalid)
	}
	if r.Fence != nil && r.Kind != Fence {
		return fmt.Errorf("step %s: arguments \"fence\" are not taken: %w", r.Kind, jsonapi.ErrInvalid)
	}
	if r.Fence != nil {
		_, err := r.Fence.PeerSet()
		return err
	}
	return nil
}

// PeerSet is the set of Peers, each in net.HardwareAddr's canonical form.
func (f *FenceArgs) PeerSet() (map[string]bool, error) {
	if len(f.Peers) > MaxFencePeers {
		return nil, fmt.Errorf("fence: %d peers, at most %d: %w", len(f.Peers), MaxFencePeers, jsonapi.ErrInvalid)
	}
	peers := map[string]bool{}
	for _, m := range f.Peers {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 {
			return nil, fmt.Errorf("fence: peer MAC %q is not an Ethernet address: %w", m, jsonapi.ErrInvalid)
		}
		peers[hw.String()] = true
	}
	return peers, nil
}

// Round identifies a guest cooperation round that outlives one QEMU (a
// migration's destination or a restore tells the guest its outcome).
type Round struct {
	ID string `json:"id"`
	Op string `json:"op"`
}

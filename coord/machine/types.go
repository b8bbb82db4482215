package machine

import (
	"strconv"
	"time"
)

// Kind is what an operation does to a job.
type Kind string

const (
	KindCheckpoint Kind = "checkpoint" // save every VM, then resume them where they are
	KindRestart    Kind = "restart"    // restore every VM from a checkpoint and run it
	KindMigrate    Kind = "migrate"    // move the VMs that have a Dest; the others stay
	KindEvacuate   Kind = "evacuate"   // a migrate whose moving VMs leave one host; same machine
	// KindRejuvenate restarts each VM's QEMU warm, on its own Host: the
	// VM's memory stays in shared memory and a new QEMU takes over its
	// device state (Replace). Dest is ignored.
	KindRejuvenate Kind = "rejuvenate"
	// KindRelease undoes, on a VM whose coordinator's lease ran out, what
	// that absent coordinator's operation may have left (its steps are
	// unknown: each one it could have taken is presumed issued). It starts
	// in its rollback; Dest and Incoming say what hostd found.
	KindRelease Kind = "release"
)

// VM is one VM of the job, as given to New.
type VM struct {
	Name string `json:"name"`
	Host string `json:"host"` // where it runs (restart: where it ran)
	// Dest is the destination host: migrate/evacuate move the VM there
	// (empty, or equal to Host: the VM stays but is stopped and resumed
	// with the job); restart restores it there instead of Host.
	// Checkpoint and rejuvenate ignore it. Release: the VM is a
	// migration source whose stream completed, Dest holds a paused copy.
	Dest string `json:"dest,omitempty"`
	// Incoming (release only): Host holds an incoming migration's copy
	// that never ran; it must never run.
	Incoming bool `json:"incoming,omitempty"`
}

// Options tune one operation. Zero durations take the defaults below;
// New stores the normalised options in the Op, so a reloaded Op behaves
// the same.
type Options struct {
	// Live: the VMs run on through the copy of their memory (checkpoint,
	// migrate, evacuate only). Migrate/evacuate: pre-copy, no STOP phase;
	// each VM's cut is its migration's own switch-over. Checkpoint: the
	// ARM, FENCE, POINT phases instead of DETACH, STOP, SAVE; the job's cut
	// is every VM fenced, and the memory streams after the VMs resumed.
	Live bool `json:"live,omitempty"`
	// Bandwidth caps a live checkpoint's stream per VM, in bytes/s (0:
	// no cap). Only with Live on a checkpoint; carried by Arm.
	Bandwidth int64 `json:"bandwidth,omitempty"`
	// Freeze (migrate/evacuate only): dependency-aware migration: the
	// guest freezes its untainted processes during Prepare. Carried by
	// Prepare.
	Freeze bool `json:"freeze,omitempty"`
	// CopyStorage (migrate/evacuate only): the hosts share no disk
	// storage, so each moving VM's Migrate also copies its disks to its
	// destination (hostd mirrors them while the memory pre-copies and
	// switches both at the VM's switch-over). Carried by Migrate; the
	// phases and the rollback are a migration's: CancelMigrate@dest
	// drops the destination's disk copies with its paused VM.
	CopyStorage bool `json:"copy_storage,omitempty"`
	// PrepareTimeout bounds a Prepare (the guest cooperation round).
	PrepareTimeout time.Duration `json:"prepare_timeout"`
	// StepTimeout bounds every other action (Detach, Stop, Attach,
	// Resume, Abort, Kill, CancelMigrate, DeleteArtifacts, RecordCheckpoint).
	StepTimeout time.Duration `json:"step_timeout"`
	// TransferTimeout bounds Save, Migrate, Restore, WaitSave and
	// Replace, which move the VM's state; zero means StepTimeout.
	TransferTimeout time.Duration `json:"transfer_timeout"`
	// MaxAttempts bounds the attempts of a compensating or closing action
	// (Abort, Attach, Resume, Kill, CancelMigrate, DeleteArtifacts,
	// RecordCheckpoint) before it is given up and reported. Forward actions
	// are never retried: their failure rolls the operation back.
	MaxAttempts int `json:"max_attempts"`
	// CheckpointID names the checkpoint written (checkpoint) or read
	// (restart). Required for those kinds.
	CheckpointID string `json:"checkpoint_id,omitempty"`
}

// Defaults for zero Options fields.
const (
	DefaultPrepareTimeout = 60 * time.Second
	DefaultStepTimeout    = 60 * time.Second
	DefaultMaxAttempts    = 3
)

// ActionType says what the driver must do.
type ActionType string

const (
	// Forward actions. A failure (or a deadline) of any of them before
	// the commit point rolls the whole operation back.
	Prepare ActionType = "prepare" // run a guest cooperation round: guest apps reach a safe point
	Detach  ActionType = "detach"  // hot-unplug the VM's passthrough devices
	Stop    ActionType = "stop"    // pause the vCPUs
	Save    ActionType = "save"    // write the VM's state into checkpoint CheckpointID; result carries the digest
	Migrate ActionType = "migrate" // send the VM from Host to Dest; on success Dest holds a complete PAUSED copy
	// Launch (migrate/evacuate, on Host, concurrently with Detach): have
	// Dest start the moving VM's incoming QEMU, paused and empty, for the
	// Migrate that follows to stream into. Not with CopyStorage (its
	// Migrate creates the disks first). Its copy never holds the VM's
	// state before a Migrate, so it is dropped by CancelMigrate like one.
	Launch  ActionType = "launch"
	Restore ActionType = "restore" // create the VM on Host from checkpoint CheckpointID, PAUSED
	// Replace (rejuvenate): move the VM's device state into a new QEMU on
	// Host, on the same shared memory. On success the NEW QEMU holds the
	// VM, paused, and the old one is gone; on failure the old QEMU still
	// holds it, paused.
	Replace ActionType = "replace"

	// Live checkpoint (Options.Live on a checkpoint): the VMs run on
	// through the copy and stand still only for their snapshot point.
	// Arm, Fence and Point are forward actions; Point's result carries no
	// digest (WaitSave's does).
	Arm   ActionType = "arm"   // detach passthrough devices and reserve the VM's live save (its stream file, QEMU set up, Bandwidth)
	Fence ActionType = "fence" // cut the VM off the network (it runs on); the job's cut is when every VM is fenced
	Point ActionType = "point" // take the VM's snapshot point; QEMU runs it again (still fenced) while its memory streams

	// WaitSave (live checkpoint, after the cut and the VM's Resume, on
	// Host) waits for the VM's stream to be written, synced and
	// checksummed; its OK result carries Digest, Pause and SnapshotAt.
	// Bounded by TransferTimeout and NEVER retried: its failure, deadline
	// or host loss fails the checkpoint (not the VMs, which run on).
	// hostd must not fence it: it comes after the VM's Resume.
	WaitSave ActionType = "wait-save"

	// Closing and compensating actions; retried up to MaxAttempts.
	Attach          ActionType = "attach"           // hot-plug the VM's passthrough devices (on Host)
	Resume          ActionType = "resume"           // continue the vCPUs (no-op if running) and tell the guest Outcome
	Abort           ActionType = "abort"            // end the guest round as "aborted" (VM never stopped); supersedes a Prepare in flight
	DeleteArtifacts ActionType = "delete-artifacts" // remove the VM's (partial) artifacts of checkpoint CheckpointID
	CancelMigrate   ActionType = "cancel-migrate"   // on Host (the destination): abort the incoming VM and drop its copy (kill its QEMU)
	Kill            ActionType = "kill"             // destroy the VM's QEMU on Host (restart rollback; obsolete migration source)

	// RecordCheckpoint is job-level (VM and Host empty): the driver records
	// checkpoint CheckpointID as Outcome "complete" (with Digests, and for
	// a live checkpoint Points) or "failed".
	RecordCheckpoint ActionType = "record-checkpoint"
)

// forward reports whether t is a forward action (not retried; its failure
// before the commit point rolls the operation back).
func (t ActionType) forward() bool {
	switch t {
	case Prepare, Detach, Stop, Save, Migrate, Restore, Arm, Fence, Point, Replace, Launch:
		return true
	}
	return false
}

// ActionID identifies one attempt of one action. The driver and hostd
// de-duplicate on it: the same ID is the same request (Recover re-issues
// outstanding actions with their IDs), and hostd must answer a repeated ID
// with the result of the first execution instead of running it again.
type ActionID struct {
	Op      string     `json:"op"`
	VM      string     `json:"vm,omitempty"` // empty for job-level actions
	Step    ActionType `json:"step"`
	Attempt int        `json:"attempt"` // 1, 2, ... per (VM, Step)
}

// String renders the ID as "op/vm/step/attempt", a stable key for hostd.
func (id ActionID) String() string {
	return id.Op + "/" + id.VM + "/" + string(id.Step) + "/" + strconv.Itoa(id.Attempt)
}

// Action is one request for the driver. Every Action is answered by
// exactly one ActionResult with its ID (a missing answer is failed by the
// machine at Deadline; extra answers are ignored).
type Action struct {
	ID   ActionID   `json:"id"`
	Type ActionType `json:"type"`
	VM   string     `json:"vm,omitempty"`
	// Host is the host whose hostd executes the action (for CancelMigrate:
	// the destination; for Resume/Attach after a migration: the destination).
	Host string `json:"host,omitempty"`
	// Dest: Launch's, Migrate's and CancelMigrate's destination host.
	Dest string `json:"dest,omitempty"`
	// Live: Migrate pre-copies while the VM runs.
	Live bool `json:"live,omitempty"`
	// Bandwidth: Arm's stream cap in bytes/s (0: none).
	Bandwidth int64 `json:"bandwidth,omitempty"`
	// Freeze: Prepare of a dependency-aware migration.
	Freeze bool `json:"freeze,omitempty"`
	// CopyStorage: Migrate also copies the VM's disks to Dest.
	CopyStorage bool `json:"copy_storage,omitempty"`
	// Outcome: for Resume, what the guest is told ("checkpointed",
	// "migrated", "restored", "rejuvenated", "aborted"); for
	// RecordCheckpoint, "complete" or "failed".
	Outcome      string `json:"outcome,omitempty"`
	CheckpointID string `json:"checkpoint_id,omitempty"`
	// Digests: RecordCheckpoint "complete" only, VM name -> artifact digest.
	Digests map[string]string `json:"digests,omitempty"`
	// Points: RecordCheckpoint "complete" of a live checkpoint only, VM
	// name -> its snapshot point (from its WaitSave result).
	Points map[string]PointInfo `json:"points,omitempty"`
	// Deadline, on the driver's clock: past it, a Tick fails the action
	// with reason "deadline". hostd may use it to bound the work.
	Deadline time.Time `json:"deadline"`
}

// Outcomes: told to guests by Resume, reported per VM and per operation.
const (
	OutcomeCheckpointed = "checkpointed"
	OutcomeMigrated     = "migrated"
	OutcomeRestored     = "restored"
	OutcomeRejuvenated  = "rejuvenated"
	OutcomeAborted      = "aborted"  // rolled back: as before the operation (restart: not running)
	OutcomeLost         = "lost"     // its host went down
	OutcomeStranded     = "stranded" // a closing action kept failing: needs an operator (see Error)

	CheckpointComplete = "complete"
	CheckpointFailed   = "failed"
)

// Event is an input of Op.Step: ActionResult, Tick, HostDown or Cancel.
type Event interface{ isEvent() }

// ActionResult is the driver's answer to an Action.
type ActionResult struct {
	ID     ActionID `json:"id"`
	OK     bool     `json:"ok"`
	Reason string   `json:"reason,omitempty"` // why it failed (guest refusal, error text)
	Digest string   `json:"digest,omitempty"` // Save, WaitSave: the artifact digest (required when OK)
	// Pause (WaitSave): how long the VM's vCPUs stood still for its
	// snapshot point.
	Pause time.Duration `json:"pause_ns,omitempty"`
	// SnapshotAt (WaitSave): when the vCPUs ran again after the point.
	SnapshotAt time.Time `json:"snapshot_at,omitzero"`
	// Running (a failed CancelMigrate): the destination refused because
	// it runs the VM (a Resume there succeeded, whoever sent it).
	Running bool `json:"running,omitempty"`
	// Now is the driver's clock when the result arrived; it dates the
	// deadlines of the actions this result triggers. Zero: the latest
	// time the machine has seen.
	Now time.Time `json:"now,omitzero"`
}

// PointInfo is one VM's snapshot point in a live checkpoint.
type PointInfo struct {
	Pause      time.Duration `json:"pause_ns"`
	SnapshotAt time.Time     `json:"snapshot_at"`
}

// Tick advances the machine's clock; outstanding actions whose deadline is
// at or before Now fail with reason "deadline".
type Tick struct{ Now time.Time }

// HostDown says the driver lost a hostd for good (for this operation).
type HostDown struct {
	Host string
	Now  time.Time
}

// Cancel asks to roll the operation back (operator request, shutdown).
// It is ignored after the commit point.
type Cancel struct {
	Reason string
	Now    time.Time
}

func (ActionResult) isEvent() {}
func (Tick) isEvent()         {}
func (HostDown) isEvent()     {}
func (Cancel) isEvent()       {}

// Phase is the operation's job-level stage.
type Phase string

const (
	// Forward phases, each a barrier across the job: every VM gets the
	// phase's action, and the next phase starts when all succeeded.
	PhasePrepare Phase = "prepare"
	PhaseDetach  Phase = "detach"
	PhaseStop    Phase = "stop"
	PhaseSave    Phase = "save"
	PhaseMigrate Phase = "migrate"
	PhaseRestore Phase = "restore"
	PhaseArm     Phase = "arm"     // live checkpoint
	PhaseFence   Phase = "fence"   // live checkpoint
	PhasePoint   Phase = "point"   // live checkpoint
	PhaseReplace Phase = "replace" // rejuvenate
	// Closing phases: each VM runs its own chain, no barrier.
	PhaseResume   Phase = "resume"   // committed checkpoint, restart or rejuvenate: Attach, Resume (live checkpoint: then WaitSave)
	PhaseDiscard  Phase = "discard"  // live checkpoint whose stream failed after the cut: DeleteArtifacts, then RecordCheckpoint failed
	PhaseSwitch   Phase = "switch"   // committed migration: Attach/Resume at Dest, Kill the source
	PhaseRollback Phase = "rollback" // failed before the commit point: undo what was issued
	PhaseDone     Phase = "done"
)

// Status of one step of one VM. A step that was issued may have taken
// effect even if it failed or its answer never came, so every compensation
// keys on "issued at all" (Status != ""), not on success.
type Status string

const (
	StatusIssued Status = "issued" // outstanding, or superseded without an answer
	StatusOK     Status = "ok"
	StatusFailed Status = "failed" // failed, timed out, or given up after MaxAttempts
)

// Direction of a VM's closing chain.
type Direction string

const (
	DirForward Direction = "forward" // toward the kind's outcome (after the commit, or salvaged)
	DirBack    Direction = "back"    // rolling back to where it was
)

// VMState is the machine's record of one VM. All of it is journaled.
type VMState struct {
	VM
	// At is the host holding the VM's current copy: Host, Dest once its
	// destination was told to run it (Switched), the restore target for a
	// restart; empty when no copy exists (a restart rolled back).
	At       string     `json:"at,omitempty"`
	Dir      Direction  `json:"dir,omitempty"`
	Switched bool       `json:"switched,omitempty"` // Resume was issued at Dest: the move is irreversible
	Step     ActionType `json:"step,omitempty"`     // last action issued
	Outcome  string     `json:"outcome,omitempty"`  // set when Finished or Lost
	Error    string     `json:"error,omitempty"`    // failures seen, "; "-separated
	Lost     bool       `json:"lost,omitempty"`
	Finished bool       `json:"finished,omitempty"` // nothing more to do for this VM
	Digest   string     `json:"digest,omitempty"`   // Save or WaitSave result
	// Pause, SnapshotAt: the WaitSave result of a live checkpoint.
	Pause      time.Duration `json:"pause_ns,omitempty"`
	SnapshotAt time.Time     `json:"snapshot_at,omitzero"`

	Prepare Status `json:"prepare,omitempty"`
	Detach  Status `json:"detach,omitempty"`
	Stop    Status `json:"stop,omitempty"`
	Save    Status `json:"save,omitempty"`
	Migrate Status `json:"migrate,omitempty"`
	Launch  Status `json:"launch,omitempty"`
	Restore Status `json:"restore,omitempty"`
	Arm     Status `json:"arm,omitempty"`
	Fence   Status `json:"fence,omitempty"`
	Point   Status `json:"point,omitempty"`
	Replace Status `json:"replace,omitempty"`
	Attach  Status `json:"attach,omitempty"`
	Finish  Status `json:"finish,omitempty"` // the closing Resume or Abort (guest told the outcome)
	Delete  Status `json:"delete,omitempty"`
	Cancel  Status `json:"cancel,omitempty"`
	Kill    Status `json:"kill,omitempty"`
	// WaitSave: the live checkpoint's stream (never retried).
	WaitSave Status `json:"wait_save,omitempty"`

	Tries map[ActionType]int `json:"tries,omitempty"` // attempts issued per action type
	// Pending is the VM's outstanding main action; Side its outstanding
	// Launch (beside its Detach) or CancelMigrate (which runs at the
	// destination, concurrently).
	Pending *Action `json:"pending,omitempty"`
	Side    *Action `json:"side,omitempty"`
}

// Result is the report of an operation (final once Done).
type Result struct {
	Op        string `json:"op"`
	Kind      Kind   `json:"kind"`
	Job       string `json:"job"`
	Done      bool   `json:"done"`
	Committed bool   `json:"committed"`
	// Outcome: the kind's outcome ("checkpointed", "migrated", "restored",
	// "rejuvenated") if the commit point was passed, else "aborted"; empty
	// while running. It says what happened to the VMs; for a checkpoint,
	// Checkpoint says whether the checkpoint exists (a live checkpoint can
	// be "checkpointed" and "failed": its VMs went on, a stream did not
	// make it).
	Outcome string `json:"outcome,omitempty"`
	// Reason: the failure that rolled the operation back, or that failed
	// a live checkpoint after its cut ("vm b: wait-save: ...").
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"` // job-level problems (RecordCheckpoint given up)
	// Checkpoint (checkpoint kind): "complete" iff every VM's Save (live:
	// WaitSave) succeeded, "failed" if the operation rolled back or (live)
	// a stream failed; empty while undecided.
	Checkpoint   string            `json:"checkpoint,omitempty"`
	CheckpointID string            `json:"checkpoint_id,omitempty"`
	Digests      map[string]string `json:"digests,omitempty"` // complete only
	// Points: a complete live checkpoint's snapshot points per VM.
	Points   map[string]PointInfo `json:"points,omitempty"`
	VMs      []VMResult           `json:"vms"`
	Lost     []string             `json:"lost,omitempty"`
	Stranded []string             `json:"stranded,omitempty"`
	Ignored  int                  `json:"ignored,omitempty"` // stale, duplicate or unknown results
}

// VMResult is one VM's line of a Result.
type VMResult struct {
	Name    string     `json:"name"`
	Host    string     `json:"host,omitempty"` // where its copy is now (At); where it was lost
	Step    ActionType `json:"step,omitempty"` // last action issued
	Outcome string     `json:"outcome,omitempty"`
	Error   string     `json:"error,omitempty"`
	Digest  string     `json:"digest,omitempty"`
	// Note (set by the driver, not the machine) says how the VM's part
	// departed from what was asked, e.g. stop-and-save instead of live.
	Note string `json:"note,omitempty"`
}

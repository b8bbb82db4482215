// Package machine is the coordinator's operation protocol as a pure state
// machine, in the style of etcd's raft: it consumes events and emits
// actions, and does nothing else. An operation (Op) checkpoints, restarts,
// migrates or rejuvenates one job — N QEMU VMs on several hosts, or a
// single VM — with the guests' cooperation (SymVirt): every VM of the job
// goes through the same phases, and the job's consistent cut is taken only
// when all of them got there.
//
// # Contract
//
//   - Pure. No goroutines, sockets, clock, randomness or logging inside.
//     The same Op and the same events give the same actions, byte for byte.
//   - Time is an input. Events carry the driver's clock (ActionResult.Now,
//     Tick.Now, HostDown.Now, Cancel.Now; New and Recover take now). Every
//     Action carries its Deadline; Op.Deadline is the earliest one, the
//     latest moment the driver must deliver a Tick. A Tick at or after an
//     action's deadline fails it with reason "deadline".
//   - The state is the Op struct, which marshals to JSON (encoding/json);
//     unexported fields are derived and rebuilt on first use. An Op is not
//     safe for concurrent use: one driver goroutine owns it. The driver
//     journals the Op (bbolt) after every Step and BEFORE executing the
//     actions Step returned, so it never executes an action the journal does
//     not know about.
//   - Recovery. A coordinator killed mid-operation reloads the Op and calls
//     Recover(now) once: it re-issues every outstanding action with its
//     original ActionID (fresh deadline), and the operation continues —
//     forward if it had not failed, rolling back if it had. Actions the
//     dead coordinator already executed are de-duplicated by hostd.
//   - Driver's duties. Execute each Action (an RPC to the hostd on
//     Action.Host; RecordCheckpoint is the coordinator's own catalog) and
//     answer it with exactly one ActionResult carrying its ID. Actions of one
//     Step are independent and may run in parallel. Report a hostd that is
//     gone with HostDown. Deliver Ticks no later than Op.Deadline.
//   - hostd's duties. De-duplicate on ActionID.String(): a repeated ID
//     returns the first execution's result. Compensations are idempotent and
//     harmless when there is nothing to undo (Attach of attached devices,
//     Resume of a running VM, Abort of a round the guest is not in, Kill or
//     CancelMigrate of a VM that is not there, DeleteArtifacts of nothing).
//     Live checkpoint: Attach also drops an Arm (the reserved save);
//     Resume also lifts a Fence; DeleteArtifacts also stops a stream still
//     being written. A WaitSave re-issued by Recover (same ID) waits for
//     the same stream, it never starts one again.
//     Fencing: once hostd has executed a closing action (Abort, Attach,
//     Resume, Kill, CancelMigrate, DeleteArtifacts) of an op for a VM, it
//     refuses that op's forward actions (Prepare, Detach, Stop, Save,
//     Migrate, Launch, Restore, Arm, Fence, Point, Replace) for that VM,
//     and cancels one in progress if it can; a destination that ran an
//     op's CancelMigrate refuses that op's incoming copy. WaitSave is
//     not fenced: it follows the VM's Resume. The machine stops waiting for an action at its deadline, and
//     supersedes an outstanding Prepare with an Abort (and a Migrate with a
//     CancelMigrate at the destination, which refuses the incoming copy), so
//     a forward action may reach hostd after its compensation: the fence
//     makes it a no-op. A Migrate leaves the destination's copy PAUSED: it
//     runs only on an explicit Resume there.
//   - Ignored input. Results whose ID is not outstanding (other op, unknown
//     VM, stale attempt, superseded, duplicate, late after a deadline) change
//     nothing and are counted in Op.Ignored. Events after Done are no-ops.
//
// # Phases
//
// Forward phases are barriers: the phase's action goes to every VM at once,
// and the next phase starts when every VM succeeded. Closing phases run a
// chain per VM without barriers.
//
//	checkpoint:        PREPARE -> DETACH -> STOP -> SAVE =commit=> resume: ATTACH, RESUME(checkpointed)
//	                   (+ RecordCheckpoint complete at the commit, with every VM's digest)
//	live checkpoint:   PREPARE -> ARM -> FENCE -> POINT =commit (the cut)=> resume:
//	                   RESUME(checkpointed), ATTACH, WAIT-SAVE; then, job-level:
//	                   every WaitSave OK: RecordCheckpoint complete (Digests, Points)
//	                   else:              discard: DELETE-ARTIFACTS (every VM), then RecordCheckpoint failed
//	migrate/evacuate:  PREPARE -> DETACH+LAUNCH -> STOP -> MIGRATE =commit=> switch
//	live migrate:      PREPARE -> DETACH+LAUNCH ---------> MIGRATE(live) =commit=> switch
//	                   (LAUNCH, per moving VM, on its Host beside its Detach:
//	                   the destination starts its incoming QEMU, paused and
//	                   empty, which the Migrate streams into; the DETACH
//	                   barrier waits for both. Not with CopyStorage: its
//	                   Migrate starts the destination after creating its disks)
//	                   switch, per moving VM: RESUME(migrated)@dest, ATTACH@dest, KILL@source
//	                   (resumed first: it is paused at both ends until then; hostd
//	                   plugs its devices into the running guest, and Attach reports)
//	                   switch, per staying VM (no Dest): ATTACH, RESUME(migrated)
//	                   (Options.CopyStorage: the same phases; each Migrate also copies
//	                   the VM's disks, switched with its memory; CANCEL-MIGRATE drops them)
//	restart:           RESTORE (paused, on Dest or Host) =commit=> resume: ATTACH, RESUME(restored)
//	rejuvenate:        PREPARE -> DETACH -> STOP -> REPLACE =commit=> resume: ATTACH, RESUME(rejuvenated)
//	release:           no forward phase: starts in its rollback (below)
//	any failure before the commit point                      => rollback (below)
//
// The commit point is the end of the last forward phase: every VM saved
// (checkpoint; the checkpoint is COMPLETE only then), every VM's snapshot
// point taken (live checkpoint), every moving VM's destination holds a
// complete paused copy (migrate), every VM restored paused (restart), every
// VM held paused by its new QEMU (rejuvenate). Stop-and-copy takes the
// job's cut when the STOP barrier is passed; a live migration's cut is each
// VM's own switch-over, after which that VM stays paused at both ends until
// the commit (the price of being able to roll every VM back). Evacuate is a
// migrate (one Op per job, listing all the job's VMs, with Dest set on
// those of the evacuated host).
//
// Live checkpoint. The VMs never stop for the copy: ARM detaches their
// devices and reserves the save (stream file, QEMU set up, Bandwidth);
// FENCE readies each VM's network fence (a VM that cannot be fenced is
// stopped there); POINT cuts each VM off the network right before its
// snapshot point, after which QEMU runs it again, still fenced, while its
// memory streams: no message leaves a VM after its point until every
// point is taken, so the points make a consistent cut. (A job whose VMs
// share one Ethernet segment may scope the fence to the job: FENCE then
// makes each VM hold only the frames from the job's other VMs until its
// own POINT, which keeps the cut consistent the same way; the actions
// are the same, only the fence step's arguments differ.) Passing the POINT
// barrier is the commit point: the VMs never roll back after it. Each VM
// is then resumed first ("checkpointed"; hostd unfences it, so the fences
// lift one round trip after the last point), then gets its devices back,
// and only then WAIT-SAVE waits for its stream (TransferTimeout, one
// attempt, never retried). The checkpoint is COMPLETE when every VM's WaitSave succeeded
// (its digest, pause and snapshot time go into RecordCheckpoint). If one
// failed (an error, its deadline, its host down, or a VM lost after the
// cut before its stream was saved), the checkpoint FAILED: once every VM's
// chain is over, DELETE-ARTIFACTS goes to every VM still reachable, then
// RecordCheckpoint "failed"; Result.Checkpoint is "failed" and
// Result.Reason names the VM and why ("vm b: wait-save: deadline"), while
// Result.Outcome and the VMs' outcomes stay "checkpointed" — what the
// guests were told, and the VMs do run on where they were. Point results
// carry no digest; Save (stop-and-save) results must carry one.
//
// # Failure semantics
//
// Before the commit point, any forward failure (a refusal, an error, a
// deadline, HostDown of a VM's host or of a moving VM's destination, a
// Cancel) rolls back every VM that is not lost. Each VM undoes every step
// that was ISSUED — succeeded, failed or unanswered alike, because a failed
// or timed-out action may have taken effect — in reverse order, on its
// Host:
//
//	CANCEL-MIGRATE@dest   if Migrate or Launch was issued (runs concurrently with
//	                      the rest, even while the Migrate is still outstanding;
//	                      after an outstanding Launch is answered or timed out)
//	ATTACH                if Detach or Arm was issued (hostd also drops the arm)
//	RESUME(aborted)       if Stop, Migrate, Replace, Fence or Point was issued (the VM
//	                      may be paused or fenced; hostd unfences it), else
//	ABORT                 if Prepare was issued (an outstanding Prepare is superseded at once)
//	DELETE-ARTIFACTS      if Save, Arm or Point was issued (the partial checkpoint goes)
//	restart: KILL@target  if Restore was issued (nothing is left half-running)
//
// A VM waits for its own outstanding forward action (Detach, Stop, Save,
// Migrate, Restore, Arm, Fence, Point, Replace) to be answered or to time
// out before undoing it; a checkpoint that rolls back records
// RecordCheckpoint "failed". A failed Replace leaves the old QEMU holding
// the VM paused, a successful one the new QEMU: either way Resume(aborted)
// on Host runs it.
//
// A moving VM's closing Resume(aborted) or Abort at its source waits for
// its CancelMigrate whenever a Launch or a Migrate was issued (the
// destination is dropped first). If that cancel is given up on a live
// destination after only a Launch, the source goes on and the error says
// so: that copy never received the VM's state, so it is no second copy
// (its lease there discards it).
//
// Migration, exactly: the destination runs a VM only after Resume@dest was
// issued (VMState.Switched), and that happens only after the commit point
// or in a salvage (below). So before the commit every VM can still roll
// back, and the destination's copy is always killed first: a moving VM's
// source is resumed only after CancelMigrate at its destination succeeded,
// or once its destination host is reported down (a dead host runs no
// copy). If that CancelMigrate is given up on a live destination, the
// source stays paused and the VM is stranded with the error: never two
// copies. After the commit no VM rolls back, except one whose destination
// host dies before its Resume@dest was issued: its source still holds the
// complete paused state and is resumed there ("aborted", reported in its
// Error), while the rest of the job goes on to its destinations. A VM whose
// Resume@dest was issued is never resumed at its source again (two copies
// must never run): if its destination dies it is lost; if its Resume@dest
// keeps failing it is stranded and its source copy is left paused for an
// operator. The source copy is killed only after Resume@dest succeeded.
// Salvage: if a moving VM's SOURCE host dies after its transfer completed
// and before anything was resumed or cancelled, the VM continues at its
// destination (outcome "migrated") instead of being lost, whatever the rest
// of the job does.
//
// Release. A hostd whose coordinator's lease on a VM ran out (the
// coordinator is gone, its operation's steps unknown) runs a release of
// that VM, which presumes issued every step the operation could have
// taken there and rolls them back as above: a held VM gets ATTACH,
// RESUME(aborted); an incoming copy that never ran (VM.Incoming) gets
// KILL; a migration source whose transfer completed (Dest holds a paused
// copy) gets CANCEL-MIGRATE@dest and ATTACH, then RESUME(aborted) once
// the cancel succeeded. As the absent coordinator may have resumed the
// VM at its destination, a destination reported down does not let the
// source run (stranded), and a destination that refuses the cancel
// because it runs the VM (ActionResult.Running) makes the move final:
// the source copy is killed (outcome "migrated"). A Running answer does
// the same in any rollback.
//
// HostDown(host): every VM whose current copy is on host (VMState.At) is
// lost (salvage aside) and gets no more actions, except a CancelMigrate to
// drop its incoming copy at a live destination; actions outstanding on host
// fail without retry; no action is ever sent to a host known down. Before
// the commit point a loss rolls the other VMs back and fails a checkpoint;
// after it the other VMs carry on and a complete checkpoint stays complete
// (a live checkpoint is complete only once every WaitSave succeeded: a VM
// lost before its stream was saved fails it).
//
// Closing actions (Attach, Resume, Abort, Kill, CancelMigrate,
// DeleteArtifacts, RecordCheckpoint) are retried at once with a new attempt
// ID, up to MaxAttempts. An Attach that is given up does not block the
// Resume (a VM running without its device beats a paused one; the error is
// reported); a Resume or Abort (or a restart's Kill, or a rolled-back
// moving VM's CancelMigrate) that is given up leaves the VM "stranded" with
// its Error. WaitSave is not retried (a stream cannot be written twice).
// So when Done, every VM is either lost, stranded with an error, or running
// where its outcome says (aborted restart: not running), with its devices
// attached or the attach failure in its Error; a live checkpoint's
// artifacts are complete and recorded, or deleted (on reachable hosts) and
// recorded failed.
package machine

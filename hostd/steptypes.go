package hostd

import (
	"github.com/symvirt/symvirt/hostd/step"
	"github.com/symvirt/symvirt/internal/pki"
)

// The step wire types live in hostd/step; these keep hostd's API as it was.
type (
	StepRequest    = step.Request
	StepResult     = step.Result
	PrepareArgs    = step.PrepareArgs
	SaveArgs       = step.SaveArgs
	MigrateArgs    = step.MigrateArgs
	ResumeArgs     = step.ResumeArgs
	ReplaceArgs    = step.ReplaceArgs
	FenceArgs      = step.FenceArgs
	MigrationGrant = step.MigrationGrant
	Grant          = step.Grant
	Round          = step.Round
)

// Step kinds (step.Prepare...).
const (
	StepPrepare         = step.Prepare
	StepDetach          = step.Detach
	StepStop            = step.Stop
	StepSave            = step.Save
	StepMigrate         = step.Migrate
	StepLaunch          = step.Launch
	StepRestore         = step.Restore
	StepAttach          = step.Attach
	StepResume          = step.Resume
	StepAbort           = step.Abort
	StepKill            = step.Kill
	StepCancelMigrate   = step.CancelMigrate
	StepDeleteArtifacts = step.DeleteArtifacts
	StepArm             = step.Arm
	StepFence           = step.Fence
	StepPoint           = step.Point
	StepWaitSave        = step.WaitSave
	StepReplace         = step.Replace
)

// SignGrant signs g with the coordinator's key (step.SignGrant).
func SignGrant(s *pki.Signer, g MigrationGrant) (*Grant, error) { return step.SignGrant(s, g) }

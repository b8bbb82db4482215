package mpi_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/e2e/mpi/scenario"
	"github.com/symvirt/symvirt/internal/testenv"
)

var jacobiArgs = scenario.JacobiArgs

const (
	holdFile = scenario.HoldFile
	ranks    = scenario.Ranks
)

// TestMPIJobThroughOperations runs examples/mpi as a 4-rank job over two
// Debian VMs (2 ranks each, user mpi, mpirun over ssh) through a
// checkpoint, the death of every VM, a restart from the checkpoint, the
// migration of one VM and the evacuation of a host through
// scripts/symvirt-node-alert (scenario.Run: make demo plays the same
// story); the final checksum must equal an undisturbed run's (the same
// binary under mpirun on the test host), the restored guest's clock must
// be within 1 s of the host's, and every rank must have measured, across
// its restore, at least the time its VM was away. The pauses each rank
// saw are logged and written, as JSON, to build/mpi-e2e/pauses.json.
//
// The VMs boot from RAM (initrd.img: the whole guest is in its checkpoint).
// SYMVIRT_MPI_BOOT=disk boots them from qcow2 overlays instead (a
// restored VM's disk then lives in the restoring hostd's STATE_DIR/disks).
func TestMPIJobThroughOperations(t *testing.T) {
	c := newCluster(t)
	s := scenario.Run(c.Cluster, scenario.Options{FromDisk: os.Getenv("SYMVIRT_MPI_BOOT") == "disk"})
	if s.ClockOffset > 1 || s.ClockOffset < -1 {
		t.Errorf("the restored guest's clock is %+.1fs off the host's", s.ClockOffset)
	}
	for _, op := range s.Ops {
		t.Logf("%s: network stall vm1 %v, vm2 %v", op.Name, op.Stall["vm1"].Round(time.Millisecond),
			op.Stall["vm2"].Round(time.Millisecond))
	}
	scenario.WritePauses(t, s.Reports, filepath.Join(testenv.RepoRoot(t), "build", "mpi-e2e", "pauses.json"))
	checkRestoredPauses(t, s.Reports, s.Away)
	if s.Got != s.Want {
		t.Fatalf("final checksum %s, undisturbed run %s", s.Got, s.Want)
	}
	t.Logf("final checksum %s = undisturbed run's", s.Got)
}

func checksum(t *testing.T, out string) string {
	t.Helper()
	return scenario.Checksum(t, out)
}

func undisturbedChecksum(t *testing.T) string { return scenario.UndisturbedChecksum(t) }

// rankReport is one rank's "jacobi-pauses" line.
type rankReport = scenario.RankReport

// checkRestoredPauses: every rank synced at the checkpoint (as user mpi)
// and, restored from it, measured at least the time its VM was away (the
// guest clock was stepped to the host's).
func checkRestoredPauses(t *testing.T, reports []rankReport, away time.Duration) {
	for _, r := range reports {
		restored := false
		for _, p := range r.Pauses {
			if p.Op == "checkpoint" && p.Outcome == "restored" {
				restored = true
				if p.Seconds < away.Seconds() {
					t.Errorf("rank %d: restored after %.2fs away by its clock, the VMs were gone %v", r.Rank, p.Seconds, away)
				}
			}
		}
		if !restored {
			t.Errorf("rank %d never returned from its checkpoint sync as restored: %+v", r.Rank, r.Pauses)
		}
	}
}

// reportPauses logs the pauses every rank saw and writes them to
// build/mpi-e2e/pauses.json.
func reportPauses(t *testing.T, out string) []rankReport {
	reports := scenario.ParsePauses(t, out)
	scenario.WritePauses(t, reports, filepath.Join(testenv.RepoRoot(t), "build", "mpi-e2e", "pauses.json"))
	return reports
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func killPID(pid int) { syscall.Kill(pid, syscall.SIGKILL) }

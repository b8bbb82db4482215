package mpi_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/e2e/mpi/scenario"
)

// TestMPIFortranCheckpointRestart runs examples/mpi-fortran (jacobi-f, the
// symvirt Fortran module over libsymvirt) as a 4-rank job over two Debian
// VMs (2 ranks each, user mpi) through a live checkpoint, the death of
// every VM and a restart from the checkpoint; the final checksum must equal
// an undisturbed run's (the same binary under mpirun on the test host), and
// every rank must have returned from its checkpoint sync as restored.
func TestMPIFortranCheckpointRestart(t *testing.T) {
	c := newCluster(t)
	want := undisturbedFortranChecksum(t)
	job := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(job, []byte(c.jobYAML("mpif", false, "a", "b")), 0o600)
	c.cli("jobs", "create", "-f", job)
	for vm, h := range c.where("mpif") {
		c.waitSerial(h, vm, "symvirt-guest-ready", 4*time.Minute)
	}
	// Output in ~/jacobi.out, as jacobi-job does, so that guestJob follows it.
	g := &guestJob{c: c, ip: vmIP(1)}
	cmd := fmt.Sprintf("cd && rm -f jacobi.out; nohup setsid mpirun --host %s:2,%s:2 -np %d "+
		"/usr/local/bin/jacobi-f %s -d 20 -H 500 -f %s >jacobi.out 2>&1 </dev/null & echo started",
		vmIP(1), vmIP(2), ranks, strings.Join(jacobiArgs, " "), holdFile)
	t.Logf("ssh mpi@%s %s", g.ip, cmd)
	g.run(cmd)
	g.waitIter(50)

	res := c.op("checkpoint", "mpif")
	if res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint not complete: %+v", res)
	}
	g.waitProgress()

	c.killAll("mpif")
	const away = 3 * time.Second
	time.Sleep(away)
	if res := c.op("restart", "mpif", "--checkpoint", res.CheckpointID); res.Outcome != machine.OutcomeRestored {
		t.Fatalf("restart: %+v", res)
	}
	g.waitProgress()

	out := g.finish()
	got := checksum(t, out)
	checkRestoredPauses(t, rankReports(t, out), away)
	if got != want {
		t.Fatalf("final checksum %s, undisturbed run %s", got, want)
	}
	t.Logf("final checksum %s = undisturbed run's", got)
}

// undisturbedFortranChecksum runs jacobi-f on the test host without an
// agent (the hook is then a no-op).
func undisturbedFortranChecksum(t *testing.T) string {
	return scenario.UndisturbedRun(t, "mpi-fortran", "jacobi-f")
}

// rankReports decodes and logs the "jacobi-pauses" lines, one per rank.
func rankReports(t *testing.T, out string) []rankReport {
	t.Helper()
	var reports []rankReport
	for _, l := range strings.Split(out, "\n") {
		js, ok := strings.CutPrefix(strings.TrimSpace(l), "jacobi-pauses ")
		if !ok {
			continue
		}
		var r rankReport
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			t.Fatalf("rank report %q: %v", js, err)
		}
		for _, p := range r.Pauses {
			t.Logf("rank %d (%s) iteration %d: paused %.2fs, %s %s", r.Rank, r.Host, p.Iter, p.Seconds, p.Op, p.Outcome)
		}
		reports = append(reports, r)
	}
	if len(reports) != ranks {
		t.Fatalf("%d rank reports, want %d:\n%s", len(reports), ranks, tail(out, 3000))
	}
	return reports
}

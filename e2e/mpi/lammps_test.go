package mpi_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// The melt example's input in the MPI guest (Debian's lammps-examples).
const meltInput = "/usr/share/lammps/examples/melt/in.melt"

// meltSteps is the length of the lengthened melt run, in two parts: a
// checkpoint lands in the first; the job then holds (see lammpsInput)
// until the test lets it run the second.
const meltSteps, meltHoldAt = 1200, 600

// lammpsSlow gates TestPMPILAMMPSInVMs (make test-slow): unmodified LAMMPS
// under TCG takes minutes.
const lammpsSlow = "SYMVIRT_TEST_SLOW"

// TestPMPILAMMPSInVMs runs an application nobody here wrote, Debian's LAMMPS
// (its Lennard-Jones melt example, lengthened), unmodified, with
// libsymvirt-pmpi.so preloaded (mpirun -x LD_PRELOAD=...), as a 4-rank job
// over two Debian VMs (2 ranks each, user mpi) through the scenario of
// TestMPIJobThroughOperations: a live checkpoint mid-run, the death of
// every VM, a restart from the checkpoint, the migration of one VM and the
// evacuation of its host through scripts/symvirt-node-alert. Its thermo
// output must equal, line for line, an undisturbed run's (the same input
// under mpirun on the test host), and every rank must have synced, at one
// of LAMMPS's own collectives, and come back restored.
func TestPMPILAMMPSInVMs(t *testing.T) {
	if os.Getenv(lammpsSlow) != "1" {
		t.Skipf("skipping: slow under TCG; %s=1 (make test-slow) runs it", lammpsSlow)
	}
	c := newCluster(t)
	job := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(job, []byte(c.jobYAML("lmp", false, "a", "b")), 0o600)
	booted := time.Now()
	c.cli("jobs", "create", "-f", job)
	for vm, h := range c.where("lmp") {
		c.waitSerial(h, vm, "symvirt-guest-ready", 4*time.Minute)
	}
	t.Logf("both VMs ready %.0fs after jobs create", time.Since(booted).Seconds())
	l := &lammpsRun{g: &guestJob{c: c, ip: vmIP(1)}}
	input := lammpsInput(t, l.g.run("cat "+meltInput))
	want := thermoRows(t, undisturbedLAMMPS(t, input))
	l.start(input)
	l.waitStep(100)

	res := c.op("checkpoint", "lmp")
	if res.Checkpoint != machine.CheckpointComplete {
		t.Fatalf("checkpoint not complete: %+v", res)
	}
	// Not asserted (it depends on TCG's speed): did it land in the dynamics,
	// before the hold?
	if held := strings.Contains(l.g.run("cat lammps.out"), "symvirt-held"); held {
		t.Logf("the checkpoint landed in the hold loop (LAMMPS was at step %d), not mid-run", l.step)
	} else {
		t.Logf("the checkpoint landed mid-run (LAMMPS was at step %d of %d, the hold at %d)", l.step, meltSteps, meltHoldAt)
	}
	l.waitProgress()

	c.killAll("lmp")
	time.Sleep(3 * time.Second)
	if res := c.op("restart", "lmp", "--checkpoint", res.CheckpointID); res.Outcome != machine.OutcomeRestored {
		t.Fatalf("restart: %+v", res)
	}
	l.waitProgress()

	if res := c.op("migrate", "vm2", "--to", "c"); res.Outcome != machine.OutcomeMigrated {
		t.Fatalf("migrate: %+v", res)
	}
	l.waitProgress()
	c.nodeAlert("c")
	if w := c.where("lmp"); w["vm2"] == "c" {
		t.Fatalf("after evacuate vm2 is still on c: %v", w)
	}
	l.waitProgress()

	out := l.finish()
	checkPMPISyncs(t, out)
	got := thermoRows(t, out)
	if !slices.Equal(got, want) {
		t.Fatalf("thermo output differs from the undisturbed run's\ngot  %q\nwant %q", got, want)
	}
	t.Logf("thermo output (%d rows) = undisturbed run's; last: %s", len(got), strings.TrimSpace(got[len(got)-1]))
}

// lammpsInput lengthens the melt example to meltSteps and holds it at
// meltHoldAt until the file named by the LAMMPS variable "hold" says "go":
// the test's operations all happen before the end. The hold loop is LAMMPS
// input, read by rank 0 and broadcast (MPI_Bcast on MPI_COMM_WORLD), so the
// ranks keep reaching safe points while they hold and all see the same
// decision; it changes nothing in the dynamics (the split is on a neighbour
// list rebuild, every 20 steps).
func lammpsInput(t *testing.T, melt string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^run\s+250\s*$`)
	if !re.MatchString(melt) {
		t.Fatalf("%s has no 'run 250' line to lengthen:\n%s", meltInput, melt)
	}
	hold := fmt.Sprintf("run %d\nlabel hold\ninclude ${hold}\nprint symvirt-held\nshell sleep 1\n"+
		"if \"${go} == 0\" then \"jump SELF hold\"\nrun %d", meltHoldAt, meltSteps-meltHoldAt)
	return re.ReplaceAllLiteralString(melt, hold)
}

// undisturbedLAMMPS runs the input on the test host, not held, without the
// library.
func undisturbedLAMMPS(t *testing.T, input string) string {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "in.melt"), []byte(input), 0o644)
	os.WriteFile(filepath.Join(dir, "hold.in"), []byte("variable go equal 1\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"--allow-run-as-root", "--oversubscribe", "-np", strconv.Itoa(ranks),
		"lmp", "-in", "in.melt", "-log", "none", "-var", "hold", "hold.in"}
	cmd := exec.CommandContext(ctx, "mpirun", args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mpirun %v on the test host: %v\n%s", args, err, tail(string(out), 3000))
	}
	return string(out)
}

// lammpsRun is the LAMMPS job, driven over ssh in the guest holding rank 0;
// its output is ~/lammps.out.
type lammpsRun struct {
	g     *guestJob
	lines int // output lines last seen
	step  int // last thermo step seen
}

func (l *lammpsRun) start(input string) {
	l.g.run("cd && printf 'variable go equal 0\\n' >hold.in && cat >in.melt <<'EOF'\n" + input + "\nEOF\n")
	cmd := fmt.Sprintf("cd && rm -f lammps.out; nohup setsid mpirun --host %s:2,%s:2 -np %d "+
		"-x LD_PRELOAD=/usr/lib/libsymvirt-pmpi.so -x SYMVIRT_PMPI_LOG=1 -x OMP_NUM_THREADS=1 "+
		"lmp -in in.melt -log none -var hold /home/mpi/hold.in >lammps.out 2>&1 </dev/null & echo started",
		vmIP(1), vmIP(2), ranks)
	l.g.c.t.Logf("ssh mpi@%s %s", l.g.ip, cmd)
	l.g.run(cmd)
}

var thermoRowRE = regexp.MustCompile(`(?m)^[ \t]+(\d+)[ \t]+\S+[ \t]+\S+[ \t]+\S+[ \t]+\S+[ \t]+\S+[ \t]*$`)

// waitStep waits until LAMMPS printed the thermo row of step n.
func (l *lammpsRun) waitStep(n int) {
	l.g.c.t.Helper()
	l.wait(fmt.Sprintf("step %d", n), 4*time.Minute, func(string) bool { return l.step >= n })
}

// waitProgress waits until the run printed two more lines (thermo rows, or
// rounds of holding: either needs every rank to take part).
func (l *lammpsRun) waitProgress() {
	l.g.c.t.Helper()
	since := l.lines
	l.wait("progress", 4*time.Minute, func(out string) bool { return strings.Count(out, "\n") >= since+2 })
}

// finish lets the run end and returns its output.
func (l *lammpsRun) finish() string {
	l.g.run("cd && printf 'variable go equal 1\\n' >hold.tmp && mv hold.tmp hold.in")
	// The second part of the run, undisturbed: minutes under TCG.
	l.wait("the end", 20*time.Minute, func(out string) bool { return strings.Contains(out, "Total wall time") })
	return l.g.run("cat lammps.out")
}

func (l *lammpsRun) wait(what string, timeout time.Duration, done func(string) bool) {
	c := l.g.c
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := l.g.run("cat lammps.out")
		l.lines = strings.Count(out, "\n")
		if m := thermoRowRE.FindAllStringSubmatch(out, -1); len(m) > 0 {
			l.step, _ = strconv.Atoi(m[len(m)-1][1])
		}
		if done(out) {
			return
		}
		if strings.Contains(out, "Total wall time") || strings.Contains(out, "ERROR") ||
			strings.Contains(out, "ORTE") || strings.Contains(out, "MPI_ABORT") || time.Now().After(deadline) {
			c.dumpGuests()
			c.t.Fatalf("waiting for %s of LAMMPS:\n%s", what, tail(out, 4000))
		}
		time.Sleep(2 * time.Second)
	}
}

// thermoRows is LAMMPS's thermo table: the lines after each "Step ..."
// header up to "Loop time".
func thermoRows(t *testing.T, out string) []string {
	t.Helper()
	var rows []string
	in := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "Step "):
			in = true
		case strings.HasPrefix(l, "Loop time"):
			in = false
		case in && thermoRowRE.MatchString(l):
			rows = append(rows, strings.TrimRight(l, " \r"))
		}
	}
	if len(rows) < meltSteps/50 {
		t.Fatalf("%d thermo rows, want at least %d, in:\n%s", len(rows), meltSteps/50, tail(out, 4000))
	}
	return rows
}

var pmpiNoteRE = regexp.MustCompile(`(?m)^symvirt-pmpi: rank (\d+): collective (\d+): (sync|outcome \S+)`)

// checkPMPISyncs logs where the ranks synced (SYMVIRT_PMPI_LOG=1) and
// checks that every rank came back from the checkpoint as restored.
func checkPMPISyncs(t *testing.T, out string) {
	t.Helper()
	restored := map[string]bool{}
	for _, m := range pmpiNoteRE.FindAllStringSubmatch(out, -1) {
		t.Logf("rank %s at collective %s: %s", m[1], m[2], m[3])
		if m[3] == "outcome restored" {
			restored[m[1]] = true
		}
	}
	for r := 0; r < ranks; r++ {
		if !restored[strconv.Itoa(r)] {
			t.Errorf("rank %d never came back from a sync as restored", r)
		}
	}
}

// Tests of libsymvirt-pmpi.so with real Open MPI on this host and real guest
// agent hook servers: an MPI program that knows nothing of symvirt gets safe
// points at its collectives, every rank syncs exactly once, at the same
// collective, and the program's output is that of an undisturbed run.
package pmpi_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/libsymvirt/pmpi/mpitest"
)

const ranks = 4

var syncLine = regexp.MustCompile(`^symvirt-pmpi: rank (\d+): collective (\d+): (sync|outcome \S+)`)

// checkSyncedOnce checks the library's log (SYMVIRT_PMPI_LOG=1): every rank
// synced exactly once, all at the same collective, with outcome want.
func checkSyncedOnce(t *testing.T, stderr, want string) {
	t.Helper()
	checkSynced(t, stderr, want, []int{0, 1, 2, 3})
}

// checkSynced: the ranks in which synced exactly once, at the same
// collective, with outcome want; the other ranks never synced.
func checkSynced(t *testing.T, stderr, want string, which []int) {
	t.Helper()
	syncs := map[int]string{}
	outcomes := map[int]int{}
	for _, l := range strings.Split(stderr, "\n") {
		m := syncLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		r, _ := strconv.Atoi(m[1])
		switch {
		case m[3] == "sync":
			if prev, ok := syncs[r]; ok {
				t.Errorf("rank %d synced twice: at collectives %s and %s", r, prev, m[2])
			}
			syncs[r] = m[2]
		case m[3] == "outcome "+want:
			outcomes[r]++
		default:
			t.Errorf("rank %d: %s, want outcome %s", r, m[3], want)
		}
	}
	var at []string
	for r := 0; r < ranks; r++ {
		c, ok := syncs[r]
		if !slices.Contains(which, r) {
			if ok {
				t.Errorf("rank %d synced (at collective %s), its VM had no operation", r, c)
			}
			continue
		}
		if !ok {
			t.Errorf("rank %d never synced", r)
		}
		if outcomes[r] != 1 {
			t.Errorf("rank %d got outcome %s %d times, want once", r, want, outcomes[r])
		}
		at = append(at, c)
	}
	if len(slices.Compact(slices.Clone(at))) != 1 {
		t.Errorf("ranks synced at different collectives: %v", syncs)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr)
	} else {
		t.Logf("ranks %v synced once, at collective %s: %s", which, at[0], want)
	}
}

// TestPMPIOneVM: an operation on one VM only (a migration): its ranks
// sync; the other VM's ranks wait the grace period for an operation of
// their own, see none, and go on (into the next collective, where they
// wait for the migrating ranks); nothing deadlocks and the output is the
// undisturbed run's.
func TestPMPIOneVM(t *testing.T) {
	mpitest.Require(t)
	lib := mpitest.PMPILibrary(t)
	bin := build(t, "mpicc", "testdata/allreduce_loop.c")
	argv := []string{bin, "1000", "5"}
	ref := mpitest.Run(t, mpitest.Spec{Ranks: ranks, Argv: argv})

	vms := mpitest.StartVMs(t, 2, 2)
	job := mpitest.Start(t, mpitest.Spec{Ranks: ranks, VMs: vms, Argv: argv,
		Env: []string{"LD_PRELOAD=" + lib, "SYMVIRT_PMPI_LOG=1", "SYMVIRT_PMPI_GRACE_MS=300"}})
	job.WaitLine(t, `^iteration 20 `)
	vms.OperationOn(t, []int{1}, "migrate", "m1", "migrated")
	if got := job.Wait(t); !slices.Equal(got, ref) {
		t.Errorf("output with one VM migrated mid-run differs\ngot  %q\nwant %q", got, ref)
	}
	checkSynced(t, job.Stderr(), "migrated", []int{2, 3})
}

// TestPMPIUnmodifiedProgram: without a hook socket the preloaded library
// changes nothing; with one per "VM" (two VMs of two ranks), an operation
// started mid-run makes every rank sync once at the same collective, and
// the output equals the undisturbed run's. The C entry points.
func TestPMPIUnmodifiedProgram(t *testing.T) {
	mpitest.Require(t)
	lib := mpitest.PMPILibrary(t)
	checkUnmodified(t, lib, build(t, "mpicc", "testdata/allreduce_loop.c"))
}

// TestPMPICongruentComm: a program that does its collectives on a
// duplicate of MPI_COMM_WORLD gets safe points there too, while its
// collectives on half of the ranks (where a check would deadlock) are left
// alone.
func TestPMPICongruentComm(t *testing.T) {
	mpitest.Require(t)
	lib := mpitest.PMPILibrary(t)
	checkUnmodified(t, lib, build(t, "mpicc", "testdata/allreduce_loop.c"), "dup")
}

// TestPMPIFortran: the same through the Fortran entry points, which Open
// MPI does not route through MPI_Allreduce: "use mpi" (mpi_allreduce_) and
// "use mpi_f08" (mpi_allreduce_f08_, then ompi_allreduce_f).
func TestPMPIFortran(t *testing.T) {
	mpitest.Require(t, "mpif90")
	lib := mpitest.PMPILibrary(t)
	for _, src := range []string{"testdata/allreduce_loop.f90", "testdata/allreduce_loop_f08.f90"} {
		t.Run(filepath.Base(src), func(t *testing.T) {
			checkUnmodified(t, lib, build(t, "mpif90", src))
		})
	}
}

// build compiles an MPI program without any symvirt call.
func build(t *testing.T, compiler, src string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "allreduce_loop")
	out, err := exec.Command(compiler, "-O2", "-Wall", "-Werror", "-o", bin, src).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", compiler, src, err, out)
	}
	return bin
}

func checkUnmodified(t *testing.T, lib, bin string, mode ...string) {
	// 1000 iterations of 5 ms at least: seconds for the operation to land
	// mid-run after iteration 20 is seen.
	argv := append([]string{bin, "1000", "5"}, mode...)

	ref := mpitest.Run(t, mpitest.Spec{Ranks: ranks, Argv: argv})
	if len(ref) == 0 || !strings.HasPrefix(ref[len(ref)-1], "final ") {
		t.Fatalf("undisturbed run printed no final value: %q", ref)
	}
	noAgent := mpitest.Run(t, mpitest.Spec{Ranks: ranks, Argv: argv,
		Env: []string{"LD_PRELOAD=" + lib}})
	if !slices.Equal(noAgent, ref) {
		t.Fatalf("preloaded without an agent: output differs\ngot  %q\nwant %q", noAgent, ref)
	}

	vms := mpitest.StartVMs(t, 2, 2)
	// The second VM learns of the operation later than the first: its
	// ranks must still sync at the collective the first VM's ranks chose.
	vms.Stagger = 500 * time.Millisecond
	job := mpitest.Start(t, mpitest.Spec{Ranks: ranks, VMs: vms, Argv: argv,
		Env: []string{"LD_PRELOAD=" + lib, "SYMVIRT_PMPI_LOG=1"}})
	job.WaitLine(t, `^iteration 20 `)
	if n := vms.Registered(); n != ranks {
		t.Fatalf("%d ranks registered with the agents, want %d", n, ranks)
	}
	vms.Operation(t, "checkpoint", "c1", "checkpointed")
	got := job.Wait(t)
	if !slices.Equal(got, ref) {
		t.Errorf("output with a checkpoint mid-run differs from the undisturbed run's\ngot  %q\nwant %q", got, ref)
	}
	checkSyncedOnce(t, job.Stderr(), "checkpointed")
}

// TestPMPILAMMPS: Debian's LAMMPS, the Lennard-Jones melt example run
// longer, preloaded; a checkpoint mid-run; the thermo output must equal the
// undisturbed run's.
func TestPMPILAMMPS(t *testing.T) {
	mpitest.Require(t, "lmp")
	in, err := os.ReadFile("/usr/share/lammps/examples/melt/in.melt")
	if err != nil {
		t.Skipf("skipping: LAMMPS examples not installed (scripts/deps installs lammps-examples): %v", err)
	}
	lib := mpitest.PMPILibrary(t)
	dir := t.TempDir()
	// Long enough for an operation to land mid-run.
	input := strings.Replace(string(in), "run\t\t250", "run\t\t1500", 1)
	if input == string(in) {
		t.Fatal("in.melt has no 'run 250' line to lengthen")
	}
	if err := os.WriteFile(filepath.Join(dir, "in.melt"), []byte(input), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := []string{"lmp", "-in", "in.melt", "-log", "none"}
	ref := thermo(t, mpitest.Run(t, mpitest.Spec{Ranks: ranks, Dir: dir, Argv: argv}))

	vms := mpitest.StartVMs(t, 2, 2)
	job := mpitest.Start(t, mpitest.Spec{Ranks: ranks, VMs: vms, Dir: dir, Argv: argv,
		Env: []string{"LD_PRELOAD=" + lib, "SYMVIRT_PMPI_LOG=1"}})
	job.WaitLine(t, `^\s+100\s`)
	vms.Operation(t, "checkpoint", "c1", "checkpointed")
	got := thermo(t, job.Wait(t))
	if !slices.Equal(got, ref) {
		t.Errorf("thermo output with a checkpoint mid-run differs\ngot  %q\nwant %q", got, ref)
	}
	t.Logf("final thermo line (both runs): %s", got[len(got)-1])
	checkSyncedOnce(t, job.Stderr(), "checkpointed")
}

// thermo is LAMMPS's thermo table: the lines after the "Step ..." header up
// to "Loop time".
func thermo(t *testing.T, out []string) []string {
	t.Helper()
	var rows []string
	in := false
	for _, l := range out {
		switch {
		case strings.HasPrefix(strings.TrimSpace(l), "Step "):
			in = true
		case strings.HasPrefix(l, "Loop time"):
			in = false
		case in:
			rows = append(rows, l)
		}
	}
	if len(rows) < 2 {
		t.Fatalf("no thermo output in:\n%s", strings.Join(out, "\n"))
	}
	return rows
}

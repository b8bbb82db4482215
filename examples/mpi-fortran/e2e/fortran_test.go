// Package e2e tests the Fortran Jacobi example (examples/mpi-fortran) and
// through it the Fortran binding of libsymvirt: real Open MPI on this host,
// 4 ranks over two "VMs" with a real guest agent hook server each.
// (A package of its own: the go tool refuses Fortran sources in a package
// directory without cgo.)
package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/libsymvirt/pmpi/mpitest"
)

const ranks = 4

// report is one "jacobi-pauses" line.
type report struct {
	Rank       int    `json:"rank"`
	Host       string `json:"host"`
	Iterations int    `json:"iterations"`
	Pauses     []struct {
		Iter    int     `json:"iter"`
		At      float64 `json:"at"`
		Seconds float64 `json:"seconds"`
		Op      string  `json:"op"`
		Outcome string  `json:"outcome"`
	} `json:"pauses"`
}

// parse returns the checksum and the per-rank reports of a run's output.
func parse(t *testing.T, out []string) (string, []report) {
	t.Helper()
	var sum string
	var reps []report
	done := false
	for _, l := range out {
		switch {
		case strings.HasPrefix(l, "jacobi-checksum "):
			sum = strings.TrimPrefix(l, "jacobi-checksum ")
		case strings.HasPrefix(l, "jacobi-pauses "):
			var r report
			if err := json.Unmarshal([]byte(strings.TrimPrefix(l, "jacobi-pauses ")), &r); err != nil {
				t.Fatalf("bad pauses line %q: %v", l, err)
			}
			reps = append(reps, r)
		case l == "jacobi-done":
			done = true
		}
	}
	if !done || sum == "" || len(reps) != ranks {
		t.Fatalf("incomplete output (done %v, checksum %q, %d reports):\n%s", done, sum, len(reps), strings.Join(out, "\n"))
	}
	return sum, reps
}

// TestFortranJacobi: the Fortran example compiles, runs with 4 ranks
// without symvirt, and with a checkpoint pending mid-run every rank syncs
// once at the same iteration; the checksum equals the undisturbed run's.
func TestFortranJacobi(t *testing.T) {
	mpitest.Require(t, "mpif90")
	mpitest.Make(t, "examples/mpi-fortran")
	bin := filepath.Join(testenv.RepoRoot(t), "examples/mpi-fortran/jacobi-f")
	args := []string{bin, "-n", "4096", "-i", "200"}

	ref, _ := parse(t, mpitest.Run(t, mpitest.Spec{Ranks: ranks, Argv: args}))
	t.Logf("undisturbed checksum %s", ref)

	// The run holds at iteration 60 until the test has done its operation,
	// so the operation lands mid-run whatever the machine's speed.
	hold := filepath.Join(t.TempDir(), "go-on")
	vms := mpitest.StartVMs(t, 2, 2)
	job := mpitest.Start(t, mpitest.Spec{Ranks: ranks, VMs: vms,
		Argv: append(args, "-H", "60", "-f", hold)})
	job.WaitLine(t, `^jacobi-iter 50 `)
	if n := vms.Registered(); n != ranks {
		t.Fatalf("%d ranks registered with the agents, want %d", n, ranks)
	}
	vms.Operation(t, "checkpoint", "c1", "checkpointed")
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sum, reps := parse(t, job.Wait(t))
	if sum != ref {
		t.Errorf("checksum with a checkpoint mid-run %s, undisturbed %s", sum, ref)
	}
	iter := -1
	for _, r := range reps {
		n := 0
		for _, p := range r.Pauses {
			if p.Op == "" {
				continue
			}
			n++
			if p.Op != "checkpoint" || p.Outcome != "checkpointed" {
				t.Errorf("rank %d synced for %s (%s), want checkpoint (checkpointed)", r.Rank, p.Op, p.Outcome)
			}
			if iter >= 0 && p.Iter != iter {
				t.Errorf("rank %d synced at iteration %d, another rank at %d", r.Rank, p.Iter, iter)
			}
			iter = p.Iter
		}
		if n != 1 {
			t.Errorf("rank %d synced %d times, want once: %+v", r.Rank, n, r.Pauses)
		}
	}
	if iter < 50 || iter > 60 {
		t.Errorf("synced at iteration %d, want between 50 and the hold at 60", iter)
	}
	if !t.Failed() {
		t.Logf("every rank synced once at iteration %d; checksum %s equals the undisturbed run's", iter, sum)
	}
}

// TestFortranMatchesC: the Fortran example is the twin of examples/mpi's C
// one: same options, same grid bit for bit, so the same checksum.
func TestFortranMatchesC(t *testing.T) {
	mpitest.Require(t, "mpif90")
	root := testenv.RepoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "examples/mpi/jacobi.c")); err != nil {
		t.Skipf("skipping: no C example to compare with: %v", err)
	}
	mpitest.Make(t, "examples/mpi-fortran")
	mpitest.Make(t, "examples/mpi", "jacobi")
	args := []string{"-n", "4096", "-i", "300"}
	f, _ := parse(t, mpitest.Run(t, mpitest.Spec{Ranks: ranks,
		Argv: append([]string{filepath.Join(root, "examples/mpi-fortran/jacobi-f")}, args...)}))
	c, _ := parse(t, mpitest.Run(t, mpitest.Spec{Ranks: ranks,
		Argv: append([]string{filepath.Join(root, "examples/mpi/jacobi")}, args...)}))
	if f != c {
		t.Errorf("Fortran checksum %s, C checksum %s", f, c)
	}
}

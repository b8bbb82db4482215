// Package mpitest runs real MPI programs (Open MPI's mpirun, on this host)
// against real guest agent hook servers, for the tests of symvirt-pmpi and
// of the MPI examples: ranks are split over "VMs", one hook server each, as
// they would be split over guests.
package mpitest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/guestd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// Timeout bounds every wait of these tests: long, as 4 ranks on a loaded
// 2-core machine are slow; it is a hang detector, not a measurement.
const Timeout = 3 * time.Minute

// Require skips the test when the MPI toolchain is missing (scripts/deps
// installs it, so CI does not skip).
func Require(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{"mpicc", "mpirun", "make"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not found (scripts/deps installs Open MPI: openmpi-bin libopenmpi-dev gfortran)", tool)
		}
	}
}

// Make runs make in dir (relative to the repository root) with args.
func Make(t *testing.T, dir string, args ...string) {
	t.Helper()
	root := testenv.RepoRoot(t)
	out, err := exec.Command("make", append([]string{"-s", "-C", filepath.Join(root, dir)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("make -C %s %v: %v\n%s", dir, args, err, out)
	}
}

// PMPILibrary builds libsymvirt-pmpi.so and returns its path.
func PMPILibrary(t *testing.T) string {
	Make(t, "libsymvirt/pmpi")
	return filepath.Join(testenv.RepoRoot(t), "libsymvirt/pmpi/libsymvirt-pmpi.so")
}

// VMs is a set of hook servers standing for guests; rank r of a job talks
// to the server of VM r/RanksPerVM.
type VMs struct {
	Dir        string
	RanksPerVM int
	Servers    []*guestd.HookServer
	// Stagger is slept between making an operation pending on one VM and
	// the next, as a coordinator's prepares reach guests one by one.
	Stagger time.Duration
}

// StartVMs starts n hook servers in a short temporary directory (sun_path
// holds 107 bytes).
func StartVMs(t *testing.T, n, ranksPerVM int) *VMs {
	t.Helper()
	dir, err := os.MkdirTemp("", "symvirt-mpi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	v := &VMs{Dir: dir, RanksPerVM: ranksPerVM}
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	for i := 0; i < n; i++ {
		srv, err := guestd.NewHookServer(v.socket(i), logger.With("vm", i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		v.Servers = append(v.Servers, srv)
	}
	return v
}

func (v *VMs) socket(i int) string { return filepath.Join(v.Dir, fmt.Sprintf("vm%d.sock", i)) }

// Registered is the number of applications registered over all VMs.
func (v *VMs) Registered() int {
	n := 0
	for _, s := range v.Servers {
		n += s.Registered()
	}
	return n
}

// Operation makes op pending on every VM (one after the other, as a
// coordinator reaches each guest separately), waits until every registered
// application on each has synced, then finishes it with outcome.
func (v *VMs) Operation(t *testing.T, op, id, outcome string) {
	t.Helper()
	all := make([]int, len(v.Servers))
	for i := range all {
		all[i] = i
	}
	v.OperationOn(t, all, op, id, outcome)
}

// OperationOn is Operation on some VMs only (e.g. one VM migrating).
func (v *VMs) OperationOn(t *testing.T, vms []int, op, id, outcome string) {
	t.Helper()
	for n, i := range vms {
		if n > 0 {
			time.Sleep(v.Stagger)
		}
		v.Servers[i].Begin(op, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	for _, i := range vms {
		if err := v.Servers[i].WaitSynced(ctx); err != nil {
			t.Fatalf("%s %s: vm %d: WaitSynced: %v", op, id, i, err)
		}
	}
	for _, i := range vms {
		v.Servers[i].Finish(id, outcome)
	}
}

// Job is a running mpirun.
type Job struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout []string
	stderr bytes.Buffer
	lines  chan string
	done   chan struct{}
	err    error
}

// Spec is how to start a job.
type Spec struct {
	Ranks int
	Env   []string // NAME=VALUE, exported to every rank (mpirun -x)
	VMs   *VMs     // nil: no hook socket at all
	Dir   string   // working directory
	Argv  []string // the program and its arguments
}

// Start starts mpirun. Every rank gets SYMVIRT_HOOK_SOCKET of its VM
// (through a shell that reads Open MPI's OMPI_COMM_WORLD_RANK), or a path
// where no agent listens if spec.VMs is nil.
func Start(t *testing.T, spec Spec) *Job {
	t.Helper()
	args := []string{"--oversubscribe", "--bind-to", "none", "-np", fmt.Sprint(spec.Ranks),
		"--mca", "btl", "self,vader"}
	if os.Geteuid() == 0 {
		args = append(args, "--allow-run-as-root")
	}
	for _, e := range spec.Env {
		name, _, _ := strings.Cut(e, "=")
		args = append(args, "-x", name)
	}
	sock := "/nonexistent/symvirt-hook.sock"
	if spec.VMs != nil {
		sock = filepath.Join(spec.VMs.Dir, "vm$((OMPI_COMM_WORLD_RANK / "+fmt.Sprint(spec.VMs.RanksPerVM)+")).sock")
	}
	args = append(args, "sh", "-c", `SYMVIRT_HOOK_SOCKET=`+sock+`; export SYMVIRT_HOOK_SOCKET; exec "$@"`, "sh")
	args = append(args, spec.Argv...)
	j := &Job{cmd: exec.Command("mpirun", args...), lines: make(chan string, 1000), done: make(chan struct{})}
	j.cmd.Dir = spec.Dir
	j.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	j.cmd.Env = append(os.Environ(), spec.Env...)
	j.cmd.Stderr = &j.stderr
	out, err := j.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mpirun %s", strings.Join(args, " "))
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go j.read(out)
	t.Cleanup(func() {
		select {
		case <-j.done:
			return
		default:
		}
		// mpirun forwards SIGTERM to its ranks; if it does not end, the
		// whole process group (mpirun and the ranks it started) is killed.
		_ = j.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-j.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-j.cmd.Process.Pid, syscall.SIGKILL)
			<-j.done
		}
	})
	return j
}

func (j *Job) read(out io.Reader) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		j.mu.Lock()
		j.stdout = append(j.stdout, sc.Text())
		j.mu.Unlock()
		select {
		case j.lines <- sc.Text():
		default: // nobody waits for lines: Stdout has them all
		}
	}
	close(j.lines)
	j.err = j.cmd.Wait()
	close(j.done)
}

// WaitLine waits for a stdout line matching re.
func (j *Job) WaitLine(t *testing.T, re string) {
	t.Helper()
	r := regexp.MustCompile(re)
	deadline := time.After(Timeout)
	for {
		select {
		case l, ok := <-j.lines:
			if !ok {
				t.Fatalf("job ended before printing a line matching %q\nstderr:\n%s", re, j.Stderr())
			}
			if r.MatchString(l) {
				return
			}
		case <-deadline:
			t.Fatalf("no line matching %q within %v", re, Timeout)
		}
	}
}

// Wait waits for the job to end successfully and returns its stdout lines.
func (j *Job) Wait(t *testing.T) []string {
	t.Helper()
	select {
	case <-j.done:
	case <-time.After(Timeout):
		t.Fatalf("job still running after %v; stderr:\n%s", Timeout, j.Stderr())
	}
	if j.err != nil {
		t.Fatalf("mpirun: %v\nstderr:\n%s", j.err, j.Stderr())
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.stdout...)
}

// Stderr is what the ranks and mpirun wrote on stderr so far (complete
// after Wait).
func (j *Job) Stderr() string {
	select {
	case <-j.done:
		return j.stderr.String()
	default:
		return "(still running)"
	}
}

// Run runs a job to its end and returns its stdout lines.
func Run(t *testing.T, spec Spec) []string {
	t.Helper()
	return Start(t, spec).Wait(t)
}

package coord_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/testenv"
)

// cliRun is one run of the symvirt binary against the cluster's
// coordinator, stdout and stderr apart.
type cliRun struct {
	stdout, stderr string
	exit           int
}

func (c *cluster) run(args ...string) cliRun {
	c.t.Helper()
	cmd := exec.Command(testenv.Binary(c.t), args...)
	cmd.Env = append(os.Environ(), "SYMVIRT_COORD="+c.coord.Socket())
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliRun{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.exit = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("symvirt %v: %v", args, err)
	}
	return r
}

// runningOp waits until `symvirt ops` lists a running operation of job
// in phase, and returns its ID.
func (c *cluster) runningOp(job string, phase machine.Phase) string {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := c.run("ops", "-o", "json")
		var views []coord.OpView
		if err := json.Unmarshal([]byte(r.stdout), &views); err != nil || r.exit != 0 {
			c.t.Fatalf("ops -o json: exit %d: %v\n%s%s", r.exit, err, r.stdout, r.stderr)
		}
		for _, v := range views {
			if v.Running && v.Job == job && v.Phase == string(phase) {
				return v.ID
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no running operation of %s in phase %s:\n%s", job, phase, r.stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// watchAsync runs `symvirt ops watch ID -o json` as another process and
// returns once its first view came (the watcher is following): later, its
// views, one per line, and its exit code.
func (c *cluster) watchAsync(id string) <-chan cliRun {
	c.t.Helper()
	cmd := exec.Command(testenv.Binary(c.t), "ops", "watch", id, "-o", "json")
	cmd.Env = append(os.Environ(), "SYMVIRT_COORD="+c.coord.Socket())
	var errb bytes.Buffer
	cmd.Stderr = &errb
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	rd := bufio.NewReader(pipe)
	first, err := rd.ReadString('\n')
	if err != nil {
		c.t.Fatalf("ops watch %s: no first view: %v\n%s%s", id, err, first, errb.String())
	}
	done := make(chan cliRun, 1)
	go func() {
		rest, _ := io.ReadAll(rd)
		err := cmd.Wait()
		r := cliRun{stdout: first + string(rest), stderr: errb.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.exit = ee.ExitCode()
		}
		done <- r
	}()
	return done
}

func views(t *testing.T, out string) []coord.OpView {
	var vs []coord.OpView
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var v coord.OpView
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("watch line is not an operation view: %v\n%s", err, sc.Text())
		}
		vs = append(vs, v)
	}
	return vs
}

// A checkpoint whose guest holds the barrier (its hook application is
// frozen, so Prepare waits) is listed by `symvirt ops`, followed by
// `ops watch` from another process, and cancelled by `ops cancel` before
// its commit point: it rolls back, the VMs run with their devices, and
// the checkpoint command, the watcher and `ops show` all say so (the
// checkpoint exits with the rolled-back code).
func TestOpsCancelBeforeCommitRollsBack(t *testing.T) {
	// The Abort reaches hostd while the same operation's Prepare still
	// holds the VM (its guest is stuck): hostd cancels the Prepare and
	// runs the Abort, instead of answering busy and stranding the VMs.
	c := newCluster(t)
	since := startJob(t, c, " symvirt.stuck=1")
	waitFile(t, c.serial("a", "vm1"), `hook frozen`)
	ck := make(chan cliRun, 1)
	go func() { ck <- c.run("checkpoint", "jf", "--live=false") }()
	id := c.runningOp("jf", machine.PhasePrepare)
	watch := c.watchAsync(id)

	if r := c.run("ops", "show", id); r.exit != 0 || !strings.Contains(r.stdout, "running: prepare") ||
		!strings.Contains(r.stdout, "prepare (running)") {
		t.Errorf("ops show of a running checkpoint:\n%s%s", r.stdout, r.stderr)
	}
	r := c.run("ops", "cancel", id, "--reason", "test", "-o", "json")
	var rep coord.CancelReply
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.exit != 0 {
		t.Fatalf("ops cancel: exit %d %v\n%s%s", r.exit, err, r.stdout, r.stderr)
	}
	if rep.Effect != coord.CancelRolledBack || rep.View.Result == nil || rep.View.Result.Outcome != machine.OutcomeAborted ||
		!strings.Contains(rep.View.Result.Reason, "cancelled: test") {
		t.Fatalf("ops cancel before the commit point: %+v", rep)
	}

	cr := <-ck
	if cr.exit != 5 || !strings.Contains(cr.stdout, "aborted") || !strings.Contains(cr.stderr, "cancelled: test") {
		t.Errorf("the cancelled checkpoint: want exit 5 (rolled back), its result and why:\nexit %d\n%s%s", cr.exit, cr.stdout, cr.stderr)
	}
	w := <-watch
	vs := views(t, w.stdout)
	if w.exit != 5 || len(vs) < 2 || vs[0].Phase != string(machine.PhasePrepare) || !vs[0].Running {
		t.Fatalf("ops watch: want the prepare phase, then the end, exit 5:\nexit %d\n%s%s", w.exit, w.stdout, w.stderr)
	}
	last := vs[len(vs)-1]
	if last.Running || last.Result == nil || last.Result.Outcome != machine.OutcomeAborted {
		t.Errorf("ops watch's last line: %+v", last)
	}
	assertUntouched(t, c, since)

	if r := c.run("ops"); r.exit != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "aborted") {
		t.Errorf("ops after the cancel:\n%s%s", r.stdout, r.stderr)
	}
	if r := c.run("ops", "cancel", id); r.exit != 0 || !strings.Contains(r.stdout, "nothing to cancel") {
		t.Errorf("ops cancel of an ended operation:\n%s%s", r.stdout, r.stderr)
	}
	if r := c.run("ops", "watch", id); r.exit != 5 || !strings.Contains(r.stdout, "aborted") {
		t.Errorf("ops watch of an operation that rolled back: want its result and exit 5:\nexit %d\n%s%s", r.exit, r.stdout, r.stderr)
	}
	if r := c.run("ops", "show", "op-nope", "-o", "json"); r.exit != 8 || !strings.Contains(r.stderr, `"not_found"`) {
		t.Errorf("ops show of no operation: want exit 8 and a JSON error:\nexit %d\n%s%s", r.exit, r.stdout, r.stderr)
	}
}

// A cancel of a live checkpoint past its commit point (the VMs resumed,
// their memory still streaming at 4 MB/s: WaitSave) does not undo it: the
// checkpoint finishes complete, `ops cancel` says so, and a second cancel
// finds nothing to cancel.
func TestOpsCancelAfterCommitFinishes(t *testing.T) {
	c := newCluster(t)
	startJob(t, c, "")
	ck := make(chan cliRun, 1)
	go func() { ck <- c.run("checkpoint", "jf", "--live", "--bandwidth", "4M") }()
	waitStreaming(t, c, "b", "vm2")
	id := c.runningOp("jf", machine.PhaseResume)
	watch := c.watchAsync(id)

	r := c.run("ops", "cancel", id)
	if r.exit != 0 || !strings.Contains(r.stdout, "past its commit point: it finished (checkpointed)") ||
		!strings.Contains(r.stdout, "complete") {
		t.Fatalf("ops cancel after the commit point:\nexit %d\n%s%s", r.exit, r.stdout, r.stderr)
	}
	if cr := <-ck; cr.exit != 0 || !strings.Contains(cr.stdout, "complete") {
		t.Errorf("the checkpoint cancelled past its commit point: want complete, exit 0:\nexit %d\n%s%s", cr.exit, cr.stdout, cr.stderr)
	}
	w := <-watch
	vs := views(t, w.stdout)
	if w.exit != 0 || len(vs) == 0 || vs[len(vs)-1].Result == nil || vs[len(vs)-1].Result.Checkpoint != machine.CheckpointComplete {
		t.Errorf("ops watch: want the end, complete, exit 0:\nexit %d\n%s%s", w.exit, w.stdout, w.stderr)
	}
	if r := c.run("ops", "cancel", id, "-o", "json"); r.exit != 0 || !strings.Contains(r.stdout, `"effect": "nothing"`) {
		t.Errorf("ops cancel of an ended operation:\nexit %d\n%s%s", r.exit, r.stdout, r.stderr)
	}
}

package hostd_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// stepper sends one VM's steps of one operation to a hostd, as the
// coordinator does (the action id names op, vm, kind and attempt).
type stepper struct {
	t  *testing.T
	h  *testenv.Hostd
	op string
	vm string
}

func (s stepper) req(kind string, attempt int) hostd.StepRequest {
	return hostd.StepRequest{ID: s.op + "/" + s.vm + "/" + kind + "/" + strconv.Itoa(attempt), Op: s.op,
		Kind: kind, VM: s.vm, Lease: 2 * time.Minute}
}

func (s stepper) send(req hostd.StepRequest) hostd.StepResult {
	s.t.Helper()
	res, err := s.h.Client().Step(ctxT(s.t, 3*time.Minute), req)
	if err != nil {
		s.t.Fatalf("step %s: %v", req.ID, err)
	}
	return res
}

// ok sends a step that must succeed.
func (s stepper) ok(req hostd.StepRequest) hostd.StepResult {
	s.t.Helper()
	res := s.send(req)
	if !res.OK {
		s.t.Fatalf("step %s: %s (%s)", req.ID, res.Reason, res.Code)
	}
	return res
}

func restartHostd(h *testenv.Hostd) {
	h.Kill() // SIGKILL: nothing is saved on the way out
	h.Start()
}

// TestStepsSurviveHostdRestart: what hostd promised the coordinator holds
// across a SIGKILL and restart of hostd. A step re-sent with its action id
// gets its first answer instead of running again; once a closing step of
// an operation ran, that operation's forward steps stay refused; a live
// stream in flight when hostd died is lost: its wait-save answers failed,
// its partial files are gone, and its point cannot be taken again.
func TestStepsSurviveHostdRestart(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	ctx := ctxT(t, 5*time.Minute)
	info, err := h.Client().Create(ctx, guestSpec(t, "sr1", ""), true)
	if err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "sr1")
	waitCounter(t, log, 2, 90*time.Second)
	root := t.TempDir()

	// A save re-sent after a restart gets its first answer: the
	// checkpoint is not written again.
	s := stepper{t, h, "op-save", "sr1"}
	s.ok(s.req(hostd.StepStop, 1))
	save := s.req(hostd.StepSave, 1)
	save.Save = &hostd.SaveArgs{Dir: filepath.Join(root, "save")}
	first := s.ok(save)
	manifest := filepath.Join(save.Save.Dir, "manifest.json")
	before, err := os.Stat(manifest)
	if err != nil {
		t.Fatal(err)
	}
	restartHostd(h)
	if again := s.send(save); again != first {
		t.Fatalf("save re-sent after a restart: %+v, first answer %+v", again, first)
	}
	if after, err := os.Stat(manifest); err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("the re-sent save wrote the checkpoint again (%v)", err)
	}

	// Closed stays closed: the operation's resume ran, hostd restarts, a
	// late stop of the same operation is refused.
	resume := s.req(hostd.StepResume, 1)
	resume.Resume = &hostd.ResumeArgs{Outcome: "checkpointed"}
	s.ok(resume)
	restartHostd(h)
	if res := s.send(s.req(hostd.StepStop, 2)); res.OK || res.Code != "invalid_state" {
		t.Fatalf("a forward step of a closed operation after a restart: %+v", res)
	}
	if st := mustStatus(t, h.Client(), "sr1"); st.State != "running" {
		t.Fatalf("after the refused stop: %s", st.State)
	}

	// A live stream in flight when hostd dies is lost.
	checkLostStream(t, h, filepath.Join(root, "live"), info.PID)
	n := counters(log)
	waitCounter(t, log, n[len(n)-1]+2, 30*time.Second)
}

// TestStepsPrecopyPointLostWithHostd: a precopy's point step is in flight
// for the whole copy, which goes through a pipe hostd holds. hostd killed
// during it: the copy fails, the VM runs on, and the point re-sent to the
// restarted hostd (same action id: it was never answered) is refused as
// lost instead of copying again at a later cut; the partial files are
// gone.
func TestStepsPrecopyPointLostWithHostd(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "live_mode: precopy\n")
	ctx := ctxT(t, 5*time.Minute)
	info, err := h.Client().Create(ctx, guestSpec(t, "pl1", ""), true)
	if err != nil {
		t.Fatal(err)
	}
	log := serialLog(h, "pl1")
	waitCounter(t, log, 2, 90*time.Second)
	l := stepper{t, h, "op-pre", "pl1"}
	dir := filepath.Join(t.TempDir(), "live")
	withDir := func(kind string, attempt int) hostd.StepRequest {
		r := l.req(kind, attempt)
		r.Save = &hostd.SaveArgs{Dir: dir, Bandwidth: 1 << 20}
		return r
	}
	l.ok(withDir(hostd.StepArm, 1))
	l.ok(l.req(hostd.StepFence, 1))
	point := withDir(hostd.StepPoint, 1)
	go h.Client().Step(ctx, point) // answered by nobody: hostd dies first
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(h.Logs(), `"msg":"live checkpoint copy started","vm":"pl1"`) {
		if time.Now().After(deadline) {
			t.Fatal("the copy never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	restartHostd(h)
	if res := l.send(point); res.OK || !strings.Contains(res.Reason, hostd.ErrStreamLost.Error()) {
		t.Fatalf("the point re-sent after hostd died during it: %+v", res)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the lost copy's files are left: %v", err)
	}
	l.ok(l.req(hostd.StepAttach, 1))
	resume := l.req(hostd.StepResume, 1)
	resume.Resume = &hostd.ResumeArgs{Outcome: "aborted"}
	l.ok(resume)
	waitRunsWithDevice(t, h, "pl1", info.PID)
	n := counters(log)
	waitCounter(t, log, n[len(n)-1]+2, 30*time.Second)
}

// waitRunsWithDevice waits until vm runs in QEMU pid with its passthrough
// device back (which waits for a stream QEMU still writes to end).
func waitRunsWithDevice(t *testing.T, h *testenv.Hostd, vm string, pid int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st := mustStatus(t, h.Client(), vm)
		if st.State == "running" && st.PID == pid && len(st.Detached) == 0 && slices.Contains(st.Present, "pt0") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not run with its device: %+v", vm, st)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkLostStream: sr1's live stream into dir, in flight when hostd is
// killed, is lost: its wait-save fails, its files go, its point is not
// taken again, and the VM runs on in QEMU pid with its device.
func checkLostStream(t *testing.T, h *testenv.Hostd, dir string, pid int) {
	t.Helper()
	l := stepper{t, h, "op-live", "sr1"}
	withDir := func(kind string, attempt int) hostd.StepRequest {
		r := l.req(kind, attempt)
		// A slow stream: hostd dies while it is written.
		r.Save = &hostd.SaveArgs{Dir: dir, Bandwidth: 8 << 20}
		return r
	}
	l.ok(withDir(hostd.StepArm, 1))
	l.ok(l.req(hostd.StepFence, 1))
	l.ok(withDir(hostd.StepPoint, 1))
	if _, err := os.Stat(filepath.Join(dir, "state.bin")); err != nil {
		t.Fatalf("no stream after the point: %v", err)
	}
	restartHostd(h)
	res := l.send(withDir(hostd.StepWaitSave, 1))
	if res.OK || !strings.Contains(res.Reason, hostd.ErrStreamLost.Error()) {
		t.Fatalf("wait-save of a stream lost with hostd: %+v", res)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the lost stream's files are left: %v", err)
	}
	if res := l.send(withDir(hostd.StepPoint, 2)); res.OK {
		t.Fatalf("a point re-taken for a lost stream: %+v", res)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the refused point wrote a stream: %v", err)
	}
	l.ok(l.req(hostd.StepAttach, 1))
	resume := l.req(hostd.StepResume, 1)
	resume.Resume = &hostd.ResumeArgs{Outcome: "aborted"}
	l.ok(resume)
	// Running, with its device back (once QEMU's orphaned stream ended),
	// in the same QEMU.
	waitRunsWithDevice(t, h, "sr1", pid)
}

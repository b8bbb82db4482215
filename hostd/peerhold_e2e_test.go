package hostd_test

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
)

// holdVM is a VM with one virtio NIC on a tap of bridge br0 in a host's
// namespace, at 10.79.0.10, and two namespaces on that bridge pinging it:
// one the job's peer, one outside the job.
type holdVM struct {
	h         *testenv.Hostd
	peer, out *testenv.Prober
	peerMAC   string
}

const holdAddr = "10.79.0.10"

func startHoldVM(t *testing.T, name string) holdVM {
	ns := testenv.NewNetNS(t, "a")
	testenv.Bridge(t, ns, "br0")
	testenv.Tap(t, ns, "tph0", "br0")
	h := testenv.StartHostd(t, "a", ns, "", "")
	peer, out := testenv.NewNetNS(t, "p"), testenv.NewNetNS(t, "o")
	testenv.Attach(t, peer, "10.79.0.2/24", ns, "br0")
	testenv.Attach(t, out, "10.79.0.3/24", ns, "br0")
	spec := guestSpec(t, name, "")
	spec.NICs = []hostd.NIC{{ID: "net1", Model: "virtio-net-pci", MAC: "52:54:00:12:00:02", Backend: "tap", Tap: "tph0"}}
	spec.Append += " symvirt.ip=" + holdAddr + "/24"
	if _, err := h.Client().Create(ctxT(t, 2*time.Minute), spec, true); err != nil {
		t.Fatal(err)
	}
	v := holdVM{h: h, peerMAC: etherOf(t, peer),
		peer: testenv.Probe(t, peer, []string{holdAddr}, 10*time.Millisecond),
		out:  testenv.Probe(t, out, []string{holdAddr}, 10*time.Millisecond)}
	start := time.Now()
	waitFor(t, "the guest answers both pingers", 2*time.Minute, func() bool {
		return v.peer.Answered(holdAddr, start) && v.out.Answered(holdAddr, start)
	})
	return v
}

// etherOf is the MAC address of namespace ns's Ethernet interface.
func etherOf(t *testing.T, ns *testenv.NetNS) string {
	m := regexp.MustCompile(`link/ether ([0-9a-f:]{17})`).FindStringSubmatch(testenv.Run(t, "ip", "-n", ns.Name, "-o", "link"))
	if m == nil {
		t.Fatalf("no Ethernet interface in %s", ns.Name)
	}
	return m[1]
}

// holdOp is one live checkpoint operation's steps on the VM, into dir.
type holdOp struct {
	stepper
	dir string
}

func (v holdVM) op(t *testing.T, op, vm string) holdOp {
	return holdOp{stepper{t, v.h, op, vm}, filepath.Join(t.TempDir(), "live")}
}

func (o holdOp) withDir(kind string) hostd.StepRequest {
	r := o.req(kind, 1)
	r.Save = &hostd.SaveArgs{Dir: o.dir}
	return r
}

// armAndFence sends the arm step and the fence step with peers.
func (o holdOp) armAndFence(peers ...string) hostd.StepResult {
	o.ok(o.withDir(hostd.StepArm))
	fence := o.req(hostd.StepFence, 1)
	fence.Fence = &hostd.FenceArgs{Peers: peers}
	return o.ok(fence)
}

// pointAndResume takes the point, waits for its stream and resumes.
func (o holdOp) pointAndResume() {
	o.ok(o.withDir(hostd.StepPoint))
	o.ok(o.withDir(hostd.StepWaitSave))
	resume := o.req(hostd.StepResume, 1)
	resume.Resume = &hostd.ResumeArgs{Outcome: "checkpointed"}
	o.ok(resume)
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPeerHoldHoldsOnlyTheJobsPeers: with the job-scoped fence, the frames
// the VM gets from its job's peer are held from the fence step until the
// VM's point and released there, while a host outside the job is answered
// all along; the whole-VM fence is not used.
func TestPeerHoldHoldsOnlyTheJobsPeers(t *testing.T) {
	v := startHoldVM(t, "ph1")
	s := v.op(t, "op-hold", "ph1")
	if res := s.armAndFence(strings.ToUpper(v.peerMAC), "52:54:00:99:99:99"); res.Note != "" {
		t.Fatalf("fence step departed from its request: %s", res.Note)
	}
	held := time.Now()
	// Answers to requests sent before the hold may still come in its
	// first moments.
	settled := held.Add(200 * time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	beforePoint := time.Now()
	if !v.out.Answered(holdAddr, settled) {
		t.Fatal("the host outside the job got no answer while the peer's frames were held")
	}
	if v.peer.Answered(holdAddr, settled) {
		t.Fatal("the job's peer got an answer while its frames were held")
	}
	s.ok(s.withDir(hostd.StepPoint))
	s.ok(s.withDir(hostd.StepWaitSave))
	waitFor(t, "the peer is answered after the point", 30*time.Second, func() bool {
		return v.peer.Answered(holdAddr, beforePoint)
	})
	g := v.peer.Longest(holdAddr, beforePoint, time.Now())
	if g.From.After(settled) {
		t.Fatalf("the peer's gap %v–%v does not cover the hold from %v", g.From, g.To, held)
	}
	t.Logf("the peer's longest gap %v (hold from the fence step's answer to the point); outside the job's %v",
		g.Len().Round(time.Millisecond), v.out.Longest(holdAddr, held, time.Now()).Len().Round(time.Millisecond))
	if !regexp.MustCompile(`"msg":"network hold released".*"frames":[1-9]`).MatchString(v.h.Logs()) {
		t.Fatal("no held frame was released at the point")
	}
	if strings.Contains(v.h.Logs(), `"msg":"network fenced"`) {
		t.Fatal("the whole VM was fenced too")
	}
	resume := s.req(hostd.StepResume, 1)
	resume.Resume = &hostd.ResumeArgs{Outcome: "checkpointed"}
	s.ok(resume)
}

// TestPeerHoldLostWithHostd: hostd killed between the fence step and the
// point takes the hold's relays with it. The restarted hostd takes QEMU's
// end of them down (the VM answers its peer again) and refuses the point:
// the peer's frames went through before it, so it cannot be part of the
// job's cut.
func TestPeerHoldLostWithHostd(t *testing.T) {
	v := startHoldVM(t, "ph2")
	s := v.op(t, "op-lost", "ph2")
	s.armAndFence(v.peerMAC)
	time.Sleep(500 * time.Millisecond)
	restartHostd(v.h)
	restarted := time.Now()
	waitFor(t, "the peer is answered after the restart", 30*time.Second, func() bool {
		return v.peer.Answered(holdAddr, restarted)
	})
	res := s.send(s.withDir(hostd.StepPoint))
	if res.OK || !strings.Contains(res.Reason, hostd.ErrHoldLost.Error()) {
		t.Fatalf("point after the hold was lost: %+v", res)
	}
	resume := s.req(hostd.StepResume, 1)
	resume.Resume = &hostd.ResumeArgs{Outcome: "aborted"}
	s.ok(resume)

	// The next operation holds again, and its point is taken.
	next := v.op(t, "op-next", "ph2")
	next.armAndFence(v.peerMAC)
	next.pointAndResume()
}

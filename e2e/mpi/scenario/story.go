package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// Options say how to play the story.
type Options struct {
	// FromDisk boots the VMs from qcow2 overlays on rootfs.qcow2 instead
	// of from RAM (initrd.img: the whole guest is in its checkpoint).
	FromDisk bool
	// Away is how long the job stays dead between the kill and the
	// restart (5 s if zero): a restored guest must not lose this time.
	Away time.Duration
	// Event, if set, is called as each event happens.
	Event func(Event)
}

// Event is one line of the timeline.
type Event struct {
	At   time.Duration // since the story began
	Text string
}

// Op is one operation on the job and the network stall each VM saw while
// it ran (from outside: see probe).
type Op struct {
	Name       string
	Start, End time.Time
	Stall      map[string]time.Duration // per VM name
}

// Story is what happened.
type Story struct {
	Start        time.Time
	Events       []Event
	Ops          []Op
	Want, Got    string // the undisturbed run's checksum, the job's
	Reports      []RankReport
	Away         time.Duration
	ClockOffset  float64 // the guest's clock after the restart, seconds off the host's
	CheckpointID string

	c     *Cluster
	g     *GuestJob
	net   *probe
	event func(Event)
}

const job = "mpi"

var jobVMs = map[string]string{"vm1": VMIP(1), "vm2": VMIP(2)}

// Run plays the story on c: 4 ranks over two VMs (user mpi, mpirun over
// ssh) through a checkpoint, the death of every VM, a restart from the
// checkpoint, the migration of vm2 to host c and a node alert for host c
// (scripts/symvirt-node-alert). An operation that does not do what it
// says fails c's test; the checksums are returned, not compared.
func Run(c *Cluster, o Options) *Story {
	c.TB.Helper()
	s := &Story{Start: time.Now(), Away: o.Away, c: c, event: o.Event}
	if s.Away == 0 {
		s.Away = 5 * time.Second
	}
	s.add("three hosts a, b, c (network namespaces, a hostd each, mutual TLS) and a coordinator are up")
	s.start(o.FromDisk)
	s.net = startProbe(c.NS["a"], VMIP(1), VMIP(2))
	defer s.net.close() // when the test fails in run
	s.run()
	s.net.close()
	for i := range s.Ops {
		op := &s.Ops[i]
		op.Stall = map[string]time.Duration{}
		for vm, ip := range jobVMs {
			op.Stall[vm] = s.net.stall(ip, op.Start, op.End)
		}
	}
	return s
}

func (s *Story) add(format string, args ...any) {
	e := Event{At: time.Since(s.Start), Text: fmt.Sprintf(format, args...)}
	s.Events = append(s.Events, e)
	s.c.TB.Logf("%7.1fs  %s", e.At.Seconds(), e.Text)
	if s.event != nil {
		s.event(e)
	}
}

// start boots the job and starts the MPI run in it.
func (s *Story) start(fromDisk bool) {
	c := s.c
	s.Want = UndisturbedChecksum(c.TB)
	s.add("undisturbed run (mpirun -np %d on this machine, no VM, no agent): checksum %s", Ranks, s.Want)
	file := filepath.Join(c.TB.TempDir(), "job.yaml")
	os.WriteFile(file, []byte(c.JobYAML(job, fromDisk, "a", "b")), 0o600)
	c.CLI("jobs", "create", "-f", file)
	from := "RAM (initrd.img)"
	if fromDisk {
		from = "qcow2 overlays on rootfs.qcow2"
	}
	s.add("symvirt jobs create: job %s, vm1 on host a, vm2 on host b (Debian 12 from %s)", job, from)
	for vm, h := range c.Where(job) {
		c.WaitSerial(h, vm, "symvirt-guest-ready", 4*time.Minute)
	}
	s.add("both VMs booted; guestd (a systemd service) is ready in each")
	s.g = &GuestJob{C: c, IP: VMIP(1)}
	// The ranks are not root; guestd lets group mpi use its hook socket.
	if out := s.g.Run("id -un; stat -c '%U:%G %a' /run/symvirt/hook.sock"); out != "mpi\nroot:mpi 660\n" {
		c.TB.Fatalf("guest user and hook socket: %q, want mpi and root:mpi 660", out)
	}
	s.g.Start(fmt.Sprintf("%s:2,%s:2", VMIP(1), VMIP(2)))
	s.add("mpirun started in vm1 (ssh mpi@%s): %d ranks as user mpi, 2 per VM", VMIP(1), Ranks)
	s.g.WaitIter(50)
	s.add("the run is at iteration 50")
}

// run takes the running job through every operation and lets it end.
func (s *Story) run() {
	c, g := s.c, s.g
	res := s.op("checkpoint", "checkpoint", job)
	if res.Checkpoint != machine.CheckpointComplete {
		c.TB.Fatalf("checkpoint not complete: %+v", res)
	}
	s.CheckpointID = res.CheckpointID
	g.WaitProgress()

	killed := s.crash()
	if res := s.op("kill + restart", "restart", job, "--checkpoint", s.CheckpointID); res.Outcome != machine.OutcomeRestored {
		c.TB.Fatalf("restart: %+v", res)
	}
	s.Ops[len(s.Ops)-1].Start = killed // the job was down from the kill on
	s.ClockOffset = g.ClockOffset()
	s.add("the restored guest's clock is %+.2fs off the host's (guestd stepped it)", s.ClockOffset)
	g.WaitProgress()

	if res := s.op("migrate vm2", "migrate", "vm2", "--to", "c"); res.Outcome != machine.OutcomeMigrated {
		c.TB.Fatalf("migrate: %+v", res)
	}
	if w := c.Where(job); w["vm2"] != "c" {
		c.TB.Fatalf("after migrate vm2 is on %s", w["vm2"])
	}
	g.WaitProgress()

	s.evacuate("c")
	g.WaitProgress()

	out := g.Finish()
	s.Got = Checksum(c.TB, out)
	s.Reports = ParsePauses(c.TB, out)
	s.add("the run ended (%d iterations): checksum %s", s.Reports[0].Iterations, s.Got)
}

// op runs symvirt args as the operation called name.
func (s *Story) op(name string, args ...string) machine.Result {
	start := time.Now()
	res := s.c.Op(args...)
	s.Ops = append(s.Ops, Op{Name: name, Start: start, End: time.Now()})
	s.add("symvirt %s: %s%s in %.1fs", strings.Join(args, " "), res.Outcome, checkpointState(res), time.Since(start).Seconds())
	return res
}

func checkpointState(res machine.Result) string {
	if res.Checkpoint == "" {
		return ""
	}
	return fmt.Sprintf(" (checkpoint %s, id %s)", res.Checkpoint, res.CheckpointID)
}

// crash kills every QEMU of the job and leaves it dead for s.Away; it
// returns when the kill began.
func (s *Story) crash() time.Time {
	start := time.Now()
	where := s.c.Where(job)
	s.c.KillAll(job)
	s.add("kill -9 of every QEMU of the job (vm1 on %s, vm2 on %s); the job is gone for %v", where["vm1"], where["vm2"], s.Away)
	time.Sleep(s.Away)
	return start
}

// evacuate fires a node alert for host, as Slurm's strigger would.
func (s *Story) evacuate(host string) {
	before := s.c.Where(job)
	start := time.Now()
	s.c.NodeAlert(host)
	s.Ops = append(s.Ops, Op{Name: "node alert " + host, Start: start, End: time.Now()})
	after := s.c.Where(job)
	var moved []string
	for vm, h := range before {
		if h == host {
			if after[vm] == host {
				s.c.TB.Fatalf("after the node alert %s is still on %s: %v", vm, host, after)
			}
			moved = append(moved, fmt.Sprintf("%s %s → %s", vm, h, after[vm]))
		}
	}
	sort.Strings(moved)
	s.add("scripts/symvirt-node-alert %s (as Slurm's strigger --node --down would): evacuated %v in %.1fs",
		host, moved, time.Since(start).Seconds())
}

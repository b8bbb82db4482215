package mpi_test

import (
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/e2e/mpi/scenario"
	"github.com/symvirt/symvirt/internal/testenv"
)

// The cluster and its helpers live in e2e/mpi/scenario (make demo uses
// them too); these are their short names for this package's tests.

// cluster is a scenario.Cluster with its parts at hand.
type cluster struct {
	*scenario.Cluster
	t     *testing.T
	coord *testenv.Coord
	hosts map[string]*testenv.Hostd
	ns    map[string]*testenv.NetNS
	image string // build/guest-mpi
}

var hostIP = scenario.HostIP

func vmIP(n int) string { return scenario.VMIP(n) }

func mpiImage(t *testing.T) string { return scenario.Image(t) }

func newCluster(t *testing.T) *cluster {
	sc := scenario.NewCluster(t)
	return &cluster{Cluster: sc, t: t, coord: sc.Coord, hosts: sc.Hosts, ns: sc.NS, image: sc.Image}
}

func (c *cluster) jobYAML(name string, fromDisk bool, hosts ...string) string {
	return c.JobYAML(name, fromDisk, hosts...)
}

func (c *cluster) cli(args ...string) string {
	c.t.Helper()
	return c.CLI(args...)
}

func (c *cluster) op(args ...string) machine.Result {
	c.t.Helper()
	return c.Op(args...)
}

func (c *cluster) where(job string) map[string]string { return c.Where(job) }

func (c *cluster) serial(host, vm string) string { return c.Serial(host, vm) }

func (c *cluster) waitSerial(host, vm, pattern string, timeout time.Duration) {
	c.t.Helper()
	c.WaitSerial(host, vm, pattern, timeout)
}

func (c *cluster) ssh(ip string, timeout time.Duration, command string) (string, error) {
	return c.SSH(ip, timeout, command)
}

func (c *cluster) killAll(job string) { c.KillAll(job) }

func (c *cluster) nodeAlert(host string) {
	c.t.Helper()
	c.NodeAlert(host)
}

func (c *cluster) dumpGuests() { c.DumpGuests() }

func tail(s string, n int) string { return scenario.Tail(s, n) }

// guestJob is a scenario.GuestJob on a cluster.
type guestJob struct {
	c     *cluster
	ip    string
	lines int // output lines last seen
	job   *scenario.GuestJob
}

// sj is the scenario's job, made on first use and kept in step with lines.
func (g *guestJob) sj() *scenario.GuestJob {
	if g.job == nil {
		g.job = &scenario.GuestJob{C: g.c.Cluster, IP: g.ip}
	}
	g.job.Lines = g.lines
	return g.job
}

func (g *guestJob) sync() { g.lines = g.job.Lines }

func (g *guestJob) run(command string) string {
	g.c.t.Helper()
	defer g.sync()
	return g.sj().Run(command)
}

func (g *guestJob) start(hosts string) {
	defer g.sync()
	g.sj().Start(hosts)
}

func (g *guestJob) waitIter(n int) {
	g.c.t.Helper()
	defer g.sync()
	g.sj().WaitIter(n)
}

func (g *guestJob) waitProgress() {
	g.c.t.Helper()
	defer g.sync()
	g.sj().WaitProgress()
}

func (g *guestJob) wait(what string, done func(string) bool) {
	g.c.t.Helper()
	defer g.sync()
	g.sj().Wait(what, done)
}

func (g *guestJob) finish() string {
	defer g.sync()
	return g.sj().Finish()
}

// checkClock: the guest's clock is within 1 s of the host's.
func (g *guestJob) checkClock() {
	g.c.t.Helper()
	defer g.sync()
	if off := g.sj().ClockOffset(); off > 1 || off < -1 {
		g.c.t.Errorf("the restored guest's clock is %+.1fs off the host's", off)
	}
}

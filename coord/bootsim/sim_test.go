package bootsim

import (
	"errors"
	"math"
	"testing"
	"time"
)

// base is a configuration whose only limits are the ones a test sets:
// everything else is far faster than what it measures.
func base() Config {
	return Config{
		Hosts: 1, VMs: 1, Degree: 1, Image: 1e9, Read: 1e8,
		NIC: 1e12, Disk: 1e12, Local: 1e12, Stream: 1e12,
		Overlay: 10 * time.Millisecond, Start: 50 * time.Millisecond, Resume: 100 * time.Millisecond,
		Parallel: 1, Step: time.Millisecond, Limit: time.Hour,
	}
}

func run(t *testing.T, c Config, m Mode) Result {
	t.Helper()
	r, err := Run(c, m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// near fails unless got is within 1% plus 5 steps of want seconds.
func near(t *testing.T, what string, got time.Duration, want float64) {
	t.Helper()
	if d := math.Abs(got.Seconds() - want); d > 0.01*want+0.005 {
		t.Errorf("%s: %v, want %.3fs", what, got, want)
	}
}

func phases(c Config) float64 { return (c.Overlay + c.Start + c.Resume).Seconds() }

func TestShareMaxMinFair(t *testing.T) {
	// Two flows through NIC 0 (capacity 10), one capped at 2: it gets 2,
	// the other the rest; a third flow on NIC 1 alone gets its cap.
	f := []flow{{cap: 100, nics: [2]int{0, -1}}, {cap: 2, nics: [2]int{0, 1}}, {cap: 4, nics: [2]int{1, -1}}, {cap: 7, nics: [2]int{-1, -1}}}
	share(f, 10, 2)
	for i, want := range []float64{8, 2, 4, 7} {
		if math.Abs(f[i].rate-want) > 1e-6 {
			t.Errorf("flow %d: rate %v, want %v", i, f[i].rate, want)
		}
	}
}

// One host: the first VMs read the image from the seed's disk, the later
// ones (after a slot frees) from what the host already holds.
func TestOneHost(t *testing.T) {
	c := base()
	c.Disk, c.Local = 100e6, 1e9
	near(t, "one VM", run(t, c, Tree).Ready, phases(c)+1.0)
	c.VMs, c.Parallel = 4, 2
	r := run(t, c, Tree)
	near(t, "4 VMs, 2 at a time", r.Ready, phases(c)+1.0+phases(c)+0.1)
	if r.SeedDisk != c.Read || r.SeedServed != 0 {
		t.Errorf("seed read %d bytes from disk and served %d, want %d and 0", r.SeedDisk, r.SeedServed, c.Read)
	}
}

// A chain (degree 1): each inner host's NIC carries what it fetches and
// what it serves, so the image moves down at half a NIC, pipelined.
func TestChain(t *testing.T) {
	c := base()
	c.Hosts, c.VMs, c.NIC = 4, 4, 100e6
	r := run(t, c, Tree)
	near(t, "chain of 4", r.Ready, phases(c)+float64(c.Read)/(c.NIC/2))
	if r.Depth != 3 || r.SeedServed != c.Read {
		t.Errorf("depth %d, seed served %d bytes, want 3 and %d", r.Depth, r.SeedServed, c.Read)
	}
}

// Copying the whole image is size / bandwidth per host the seed serves;
// the VMs then read locally.
func TestCopyBandwidthLimited(t *testing.T) {
	c := base()
	c.Hosts, c.VMs, c.NIC, c.Local = 2, 2, 100e6, 1e9
	r := run(t, c, Copy)
	near(t, "copy to one host", r.CopyDone, float64(c.Image)/c.NIC)
	near(t, "ready after the copy", r.Ready, float64(c.Image)/c.NIC+phases(c)+0.1)
	c.Hosts, c.VMs = 5, 5
	near(t, "copy to four hosts", run(t, c, Copy).CopyDone, 4*float64(c.Image)/c.NIC)
	c.Stream = 50e6 // one connection is slower than the NIC
	c.Hosts, c.VMs = 2, 2
	near(t, "copy over a slower connection", run(t, c, Copy).CopyDone, float64(c.Image)/c.Stream)
}

// The seed serves each of its children once: a higher degree makes the
// seed serve more and the tree shallower; the central server serves
// every VM on another host.
func TestDegree(t *testing.T) {
	c := base()
	c.Hosts, c.VMs, c.NIC, c.Parallel = 20, 60, 1e9, 2
	central := run(t, c, Central)
	if want := int64(57) * c.Read; central.SeedServed != want {
		t.Errorf("central: seed served %d, want %d (57 VMs not on the seed)", central.SeedServed, want)
	}
	lastServed, lastDepth := int64(0), 1<<30
	for d := 1; d <= 19; d++ {
		c.Degree = d
		r := run(t, c, Tree)
		if r.SeedServed != int64(d)*c.Read {
			t.Errorf("degree %d: seed served %d, want %d", d, r.SeedServed, int64(d)*c.Read)
		}
		if r.SeedServed < lastServed || r.Depth > lastDepth || r.SeedServed >= central.SeedServed {
			t.Errorf("degree %d: seed served %d (before %d, central %d), depth %d (before %d)",
				d, r.SeedServed, lastServed, central.SeedServed, r.Depth, lastDepth)
		}
		lastServed, lastDepth = r.SeedServed, r.Depth
	}
}

// One central server gets slower with every host added; the tree does
// not get slower in proportion.
func TestCentralDegradesWithHosts(t *testing.T) {
	c := base()
	c.NIC, c.Parallel, c.Degree, c.Step = 1e9, 2, 2, 5*time.Millisecond
	var last time.Duration
	for _, h := range []int{5, 10, 20, 40} {
		c.Hosts, c.VMs = h, 4*h
		r := run(t, c, Central)
		tree := run(t, c, Tree)
		t.Logf("%d hosts: central %v, tree %v", h, r.Ready, tree.Ready)
		if r.Ready <= last {
			t.Errorf("%d hosts: central %v, no slower than %v with fewer", h, r.Ready, last)
		}
		if h >= 10 && tree.Ready >= r.Ready {
			t.Errorf("%d hosts: tree %v not faster than central %v", h, tree.Ready, r.Ready)
		}
		last = r.Ready
	}
}

func TestInvalid(t *testing.T) {
	c := base()
	c.Degree = 0
	if _, err := Run(c, Tree); !errors.Is(err, ErrConfig) {
		t.Errorf("degree 0: %v", err)
	}
	c = base()
	c.Read = c.Image + 1
	if _, err := Run(c, Tree); !errors.Is(err, ErrConfig) {
		t.Errorf("read set over the image: %v", err)
	}
	c = base()
	c.NIC, c.Hosts, c.VMs, c.Limit = 1, 2, 2, time.Second
	if _, err := Run(c, Tree); !errors.Is(err, ErrConfig) {
		t.Errorf("past the limit: %v", err)
	}
}

func TestCalibrationApply(t *testing.T) {
	cal := Calibration{Figures: []Figure{{Name: FigOverlay, Value: 0.004}, {Name: FigStart, Value: 0.03},
		{Name: FigResume, Value: 0.07}, {Name: FigLatency, Value: 0.0005}, {Name: FigBlock, Value: 65536},
		{Name: FigStream, Value: 8e8}, {Name: FigLocal, Value: 3e9}}}
	c, err := cal.Apply(Default())
	if err != nil {
		t.Fatal(err)
	}
	if c.Overlay != 4*time.Millisecond || c.Start != 30*time.Millisecond || c.Resume != 70*time.Millisecond ||
		c.Latency != 500*time.Microsecond || c.Block != 65536 || c.Stream != 8e8 || c.Local != 3e9 {
		t.Fatalf("applied: %+v", c)
	}
	// 8 requests of 64 KiB per 0.5 ms: about 1 GB/s, above the stream cap.
	if c.Conn() != 8e8 {
		t.Errorf("connection rate %v, want the stream cap", c.Conn())
	}
	if _, err := (Calibration{Figures: []Figure{{Name: FigStream, Value: 0}}}).Apply(Default()); !errors.Is(err, ErrConfig) {
		t.Errorf("a zero throughput: %v", err)
	}
}

// A VM reading from the central server waits a round trip per request:
// with QueueDepth requests of Block in flight, its rate is
// QueueDepth*Block/Latency (below the stream cap), and so is a tree
// host's fetch from a parent that holds the blocks.
func TestLatencyBound(t *testing.T) {
	c := base()
	c.Hosts, c.VMs = 2, 2
	c.Block, c.QueueDepth, c.Latency = 1e6, 2, 20*time.Millisecond // 100 MB/s
	if got := c.conn(3); math.Abs(got-c.Conn()/3) > 1 {
		t.Errorf("three hops: %v, want a third of %v", got, c.Conn())
	}
	want := phases(c) + float64(c.Read)/c.Conn()
	near(t, "central, one remote VM", run(t, c, Central).Ready, want)
	near(t, "tree, one remote host", run(t, c, Tree).Ready, want)
}

// An inner host of a chain dies mid-read: its VM is lost; its child waits
// Detect, then fetches the rest from the seed at a whole NIC (the seed
// serves it alone, it serves no one).
func TestKillInnerHost(t *testing.T) {
	c := base()
	c.Hosts, c.VMs, c.NIC = 3, 3, 100e6
	c.Kill, c.KillAt, c.Detect = 1, 560*time.Millisecond, 200*time.Millisecond
	r := run(t, c, Tree)
	if r.Lost != 1 {
		t.Errorf("%d VMs lost, want 1", r.Lost)
	}
	had := 0.5 * c.NIC / 2 // 0.5 s at half a NIC before the death
	near(t, "the orphan's VM", r.Ready, 0.56+0.2+(float64(c.Read)-had)/c.NIC+c.Resume.Seconds())
	c.Kill = 0
	if r := run(t, c, Tree); r.Lost != 0 {
		t.Errorf("no kill: %d lost", r.Lost)
	}
	c.Kill = 3
	if _, err := Run(c, Tree); !errors.Is(err, ErrConfig) {
		t.Errorf("kill a host that is not there: %v", err)
	}
}

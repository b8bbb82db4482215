package bootsim

import (
	"errors"
	"fmt"
	"time"
)

// ErrConfig says a configuration cannot be simulated.
var ErrConfig = errors.New("bootsim: invalid configuration")

// Mode is how the image reaches the VMs.
type Mode int

const (
	// Tree is the fan-out tree of per-host copy-on-read caches.
	Tree Mode = iota
	// Copy copies the whole image to every host before its VMs start.
	Copy
	// Central serves every VM's reads from one NBD server on the seed.
	Central
)

func (m Mode) String() string {
	switch m {
	case Tree:
		return "tree"
	case Copy:
		return "copy"
	case Central:
		return "central"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// Config is one simulated boot. Rates are bytes per second.
type Config struct {
	Hosts int `json:"hosts"`
	VMs   int `json:"vms"` // spread evenly, host 0 (the seed) first
	// Degree is the fan-out of the tree: each host (the seed too) serves
	// at most Degree children.
	Degree int `json:"degree"`
	// Image is the whole image's size; Read the distinct bytes a VM reads
	// from it during boot (every VM reads the same blocks, in order).
	Image int64 `json:"image_bytes"`
	Read  int64 `json:"read_bytes"`
	// NIC is each host's link, shared by what it serves and fetches.
	NIC float64 `json:"nic_bps"`
	// Disk is the seed's disk read rate (blocks read again come from its
	// page cache).
	Disk float64 `json:"disk_bps"`
	// Local is the rate a VM reads blocks its host already holds.
	Local float64 `json:"local_bps"`
	// Stream caps one NBD connection's throughput; Block, Latency and
	// QueueDepth cap it too (QueueDepth requests of Block in flight, each
	// taking Latency).
	Stream     float64       `json:"stream_bps"`
	Block      int64         `json:"block_bytes"`
	Latency    time.Duration `json:"block_latency_ns"`
	QueueDepth int           `json:"queue_depth"`
	// The per-VM phases: overlay creation and QEMU start before the VM
	// reads, clone resume (device state in, guestd ready) after.
	Overlay time.Duration `json:"overlay_ns"`
	Start   time.Duration `json:"qemu_start_ns"`
	Resume  time.Duration `json:"resume_ns"`
	// Kill, if not 0, is a host of the tree that dies at KillAt: its VMs
	// are lost, and its children re-parent to its parent after Detect.
	Kill   int           `json:"kill,omitempty"`
	KillAt time.Duration `json:"kill_at_ns,omitempty"`
	Detect time.Duration `json:"detect_ns,omitempty"`
	// Parallel is how many VMs each host starts at once.
	Parallel int           `json:"parallel"`
	Step     time.Duration `json:"step_ns"`
	// Limit ends a run that has not finished (simulated time).
	Limit time.Duration `json:"limit_ns"`
}

// Default is 1,000 VMs on 100 hosts of a 15 GiB image (VirtMan's case)
// on 10 Gbit/s links, with placeholder phase times: the caller replaces
// the measured figures with its calibration.
func Default() Config {
	return Config{
		Hosts: 100, VMs: 1000, Degree: 2,
		Image: 15 << 30, Read: 512 << 20,
		NIC: 10e9 / 8, Disk: 500e6, Local: 2e9,
		Stream: 1e9, Block: 64 << 10, Latency: 200 * time.Microsecond, QueueDepth: 8,
		Overlay: 10 * time.Millisecond, Start: 50 * time.Millisecond, Resume: 100 * time.Millisecond,
		Parallel: 2, Step: 5 * time.Millisecond, Limit: 4 * time.Hour,
	}
}

// Conn is one NBD connection's throughput: the stream cap, or fewer
// requests in flight than the latency allows.
func (c Config) Conn() float64 { return c.conn(1) }

// conn is a connection's throughput when each read waits for hops
// round trips (a miss forwarded up a tree).
func (c Config) conn(hops int) float64 {
	r := c.Stream
	if c.Latency > 0 && c.QueueDepth > 0 && c.Block > 0 {
		r = min(r, float64(c.QueueDepth)*float64(c.Block)/(c.Latency.Seconds()*float64(hops)))
	}
	return r
}

func (c Config) validate() error {
	switch {
	case c.Hosts < 1 || c.VMs < 1:
		return fmt.Errorf("%w: %d hosts, %d VMs: want at least one of each", ErrConfig, c.Hosts, c.VMs)
	case c.Degree < 1:
		return fmt.Errorf("%w: degree %d: want at least 1", ErrConfig, c.Degree)
	case c.Read < 0 || c.Image < c.Read:
		return fmt.Errorf("%w: read set %d bytes of an image of %d", ErrConfig, c.Read, c.Image)
	case c.NIC <= 0 || c.Disk <= 0 || c.Local <= 0 || c.Conn() <= 0:
		return fmt.Errorf("%w: NIC, disk, local and NBD connection rates must be positive", ErrConfig)
	case c.Kill < 0 || c.Kill >= c.Hosts:
		return fmt.Errorf("%w: kill host %d: want 1..%d (the seed holds the only full copy), or 0 for none", ErrConfig, c.Kill, c.Hosts-1)
	case c.Parallel < 1 || c.Step <= 0 || c.Limit <= 0:
		return fmt.Errorf("%w: parallel %d, step %v, limit %v: want positive", ErrConfig, c.Parallel, c.Step, c.Limit)
	}
	return nil
}

// Parent is host h's parent in the tree of degree d (-1: the seed, h 0).
func Parent(h, d int) int {
	if h == 0 {
		return -1
	}
	return (h - 1) / d
}

// Depth is the number of hops from the seed to the deepest of n hosts.
func Depth(n, d int) int {
	depth := 0
	for h := n - 1; h > 0; h = Parent(h, d) {
		depth++
	}
	return depth
}

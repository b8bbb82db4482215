package bootsim

import (
	"fmt"
	"time"
)

// The figures a calibration measures.
const (
	FigOverlay   = "overlay"      // qcow2 overlay creation (qemu-img create -b), seconds
	FigStart     = "qemu_start"   // QEMU start to QMP ready, seconds
	FigResume    = "clone_resume" // clone: QMP ready to guestd ready, seconds
	FigLatency   = "nbd_latency"  // one NBD block read, seconds
	FigBlock     = "nbd_block"    // the block size it was measured with, bytes
	FigStream    = "nbd_stream"   // one NBD connection's sequential throughput, bytes/s
	FigLocal     = "local_read"   // reading a host's own copy, bytes/s
	FigHostReady = "clone_ready"  // clone request to guestd ready as hostd reports it, seconds (shown, not used)
)

// Figure is one calibration input: its value and where it came from.
type Figure struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Source string  `json:"source"`
}

// Calibration is what the calibration step measured on a host.
type Calibration struct {
	Host    string   `json:"host"`
	When    string   `json:"when"`
	Figures []Figure `json:"figures"`
}

// Get returns a figure by name.
func (cal Calibration) Get(name string) (Figure, bool) {
	for _, f := range cal.Figures {
		if f.Name == name {
			return f, true
		}
	}
	return Figure{}, false
}

// Apply sets the measured inputs of c from the calibration; the figures
// it lacks keep c's values. It fails on a figure that cannot be right.
func (cal Calibration) Apply(c Config) (Config, error) {
	sec := func(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }
	for _, f := range cal.Figures {
		if f.Value <= 0 && f.Name != FigOverlay {
			return c, fmt.Errorf("%w: calibration figure %s = %v: want positive", ErrConfig, f.Name, f.Value)
		}
		switch f.Name {
		case FigOverlay:
			c.Overlay = sec(f.Value)
		case FigStart:
			c.Start = sec(f.Value)
		case FigResume:
			c.Resume = sec(f.Value)
		case FigLatency:
			c.Latency = sec(f.Value)
		case FigBlock:
			c.Block = int64(f.Value)
		case FigStream:
			c.Stream = f.Value
		case FigLocal:
			c.Local = f.Value
		}
	}
	return c, nil
}

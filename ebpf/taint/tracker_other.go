//go:build !(linux && amd64)

package taint

// Tracker is unavailable on this platform; Open returns ErrUnsupported.
type Tracker struct{}

// Open returns ErrUnsupported: the BPF programs are built for linux/amd64.
func Open(Options) (*Tracker, error) { return nil, ErrUnsupported }

// Close does nothing.
func (*Tracker) Close() error { return nil }

// Tainted returns nothing.
func (*Tracker) Tainted() []Taint { return nil }

// IsTainted reports nothing.
func (*Tracker) IsTainted(int) (Taint, bool) { return Taint{}, false }

// Reset returns ErrUnsupported.
func (*Tracker) Reset(int) error { return ErrUnsupported }

// Counts returns zeros.
func (*Tracker) Counts() (tainted, events uint64) { return 0, 0 }

package imagecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoSource: no source could give a chunk.
var ErrNoSource = errors.New("no source has the chunk")

// Per-attempt deadline, and how long a failed source is passed over.
const (
	attemptTimeout = 20 * time.Second
	downFor        = 15 * time.Second
)

// Source is a peer that serves an image's chunks (and its manifest).
type Source interface {
	Name() string
	Chunk(ctx context.Context, i int) ([]byte, error)
	Manifest(ctx context.Context) ([]byte, error)
}

// Sources are a cache's peers in the order to ask them: its parent in the
// fan-out tree, then its grandparent and on up to the seed, then other
// replicas. A source that fails, or serves bytes that do not match, is
// passed over for a while: the host re-parents to the next one.
type Sources struct {
	log  *slog.Logger
	mu   sync.Mutex
	list []Source
	down map[string]time.Time

	rejected, failovers atomic.Int64
	now                 func() time.Time
}

// NewSources orders list as given.
func NewSources(list []Source, log *slog.Logger) *Sources {
	return &Sources{list: list, log: log, down: map[string]time.Time{}, now: time.Now}
}

// Set replaces the list (a new tree for the next boot).
func (s *Sources) Set(list []Source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list, s.down = list, map[string]time.Time{}
}

// Names lists the sources in order.
func (s *Sources) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, src := range s.list {
		out = append(out, src.Name())
	}
	return out
}

// order is the list with sources that failed lately moved to its end, in
// their order (they are still tried when all else fails).
func (s *Sources) order() []Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	var up, down []Source
	for _, src := range s.list {
		if s.now().Before(s.down[src.Name()]) {
			down = append(down, src)
		} else {
			up = append(up, src)
		}
	}
	return append(up, down...)
}

func (s *Sources) fail(src Source, err error) {
	s.mu.Lock()
	s.down[src.Name()] = s.now().Add(downFor)
	s.mu.Unlock()
	s.failovers.Add(1)
	s.log.Warn("image source failed; trying the next one", "source", src.Name(), "err", err)
}

// Fetch gets chunk i of m from the first source that gives the right
// bytes.
func (s *Sources) Fetch(ctx context.Context, m *Manifest, i int) ([]byte, error) {
	var errs []error
	for _, src := range s.order() {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		data, err := src.Chunk(actx, i)
		cancel()
		if err == nil {
			if _, n := m.Span(i); len(data) != n {
				err = fmt.Errorf("chunk %d: %d bytes, want %d: %w", i, len(data), n, ErrDigest)
			} else {
				err = m.Check(i, data)
			}
			if errors.Is(err, ErrDigest) {
				s.rejected.Add(1)
			}
		}
		if err == nil {
			return data, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
		s.fail(src, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("chunk %d: %w: %w", i, ErrNoSource, errors.Join(errs...))
}

// FetchManifest gets the manifest whose sha256 is id from the first
// source that has it.
func (s *Sources) FetchManifest(ctx context.Context, id string) (*Manifest, []byte, error) {
	var errs []error
	for _, src := range s.order() {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		data, err := src.Manifest(actx)
		cancel()
		var m *Manifest
		if err == nil {
			m, err = Decode(data, id)
		}
		if err == nil {
			return m, data, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", src.Name(), err))
		s.fail(src, err)
	}
	return nil, nil, fmt.Errorf("manifest %s: %w: %w", id, ErrNoSource, errors.Join(errs...))
}

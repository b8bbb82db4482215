package hostd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/symvirt/symvirt/internal/atomicfile"
)

// epochFence remembers the highest coordinator epoch (the leader's
// fencing token) this host has obeyed, persisted in the state dir so a
// restarted hostd still refuses a deposed leader.
type epochFence struct {
	mu      sync.Mutex
	loaded  bool
	highest int64
}

// epochFile is where the highest epoch is kept.
func (h *Host) epochFile() string { return filepath.Join(h.cfg.StateDir, "coord-epoch") }

// admitEpoch lets a step through unless it comes from an epoch older than
// the highest seen (fenceEpoch).
func (h *Host) admitEpoch(req StepRequest) (StepResult, bool) {
	if err := h.fenceEpoch(req.Epoch); err != nil {
		return h.epochRefused(req, err), false
	}
	return StepResult{}, true
}

// fenceEpoch refuses a coordinator epoch older than the highest this host
// has obeyed; a newer one is persisted before what it came with runs.
// Epoch 0 (a single coordinator) is not fenced.
func (h *Host) fenceEpoch(epoch int64) error {
	if epoch == 0 {
		return nil
	}
	f := &h.epoch
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := h.loadEpoch(f); err != nil {
		return err
	}
	switch {
	case epoch < f.highest:
		return fmt.Errorf("%w: the request's epoch is %d, this host obeys epoch %d", ErrStaleEpoch, epoch, f.highest)
	case epoch > f.highest:
		if err := atomicfile.WriteFile(h.epochFile(), []byte(strconv.FormatInt(epoch, 10)+"\n"), 0o600); err != nil {
			return fmt.Errorf("coordinator epoch %d not persisted: %w", epoch, err)
		}
		h.log.Info("new coordinator epoch", "epoch", epoch, "previous", f.highest)
		f.highest = epoch
	}
	return nil
}

// loadEpoch reads the persisted epoch once (f.mu held).
func (h *Host) loadEpoch(f *epochFence) error {
	if f.loaded {
		return nil
	}
	data, err := os.ReadFile(h.epochFile())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("coordinator epoch: %w", err)
	}
	if err == nil {
		if f.highest, err = strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err != nil {
			return fmt.Errorf("coordinator epoch file %s: %w", h.epochFile(), err)
		}
	}
	f.loaded = true
	return nil
}

func (h *Host) epochRefused(req StepRequest, err error) StepResult {
	h.log.Warn("step refused", "id", req.ID, "kind", req.Kind, "vm", req.VM, "epoch", req.Epoch, "err", err)
	h.metrics.ops.WithLabelValues("step_"+req.Kind, codeOf(err)).Inc()
	return StepResult{Reason: err.Error(), Code: codeOf(err)}
}

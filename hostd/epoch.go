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
// the highest seen; a newer epoch is persisted before its step runs. Steps
// without an epoch (a single coordinator) are not fenced.
func (h *Host) admitEpoch(req StepRequest) (StepResult, bool) {
	if req.Epoch == 0 {
		return StepResult{}, true
	}
	f := &h.epoch
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.loaded {
		data, err := os.ReadFile(h.epochFile())
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return h.epochRefused(req, fmt.Errorf("coordinator epoch: %w", err)), false
		}
		if err == nil {
			if f.highest, err = strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err != nil {
				return h.epochRefused(req, fmt.Errorf("coordinator epoch file %s: %w", h.epochFile(), err)), false
			}
		}
		f.loaded = true
	}
	switch {
	case req.Epoch < f.highest:
		return h.epochRefused(req, fmt.Errorf("%w: the step's epoch is %d, this host obeys epoch %d", ErrStaleEpoch,
			req.Epoch, f.highest)), false
	case req.Epoch > f.highest:
		if err := atomicfile.WriteFile(h.epochFile(), []byte(strconv.FormatInt(req.Epoch, 10)+"\n"), 0o600); err != nil {
			return h.epochRefused(req, fmt.Errorf("coordinator epoch %d not persisted: %w", req.Epoch, err)), false
		}
		h.log.Info("new coordinator epoch", "epoch", req.Epoch, "previous", f.highest)
		f.highest = req.Epoch
	}
	return StepResult{}, true
}

func (h *Host) epochRefused(req StepRequest, err error) StepResult {
	h.log.Warn("step refused", "id", req.ID, "kind", req.Kind, "vm", req.VM, "epoch", req.Epoch, "err", err)
	h.metrics.ops.WithLabelValues("step_"+req.Kind, codeOf(err)).Inc()
	return StepResult{Reason: err.Error(), Code: codeOf(err)}
}

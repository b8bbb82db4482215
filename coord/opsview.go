package coord

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// OpView is an operation as an operator follows it (symvirt ops): a
// running one as its driver last saw it, a finished one as journaled.
type OpView struct {
	ID        string       `json:"id"`
	Kind      machine.Kind `json:"kind"`
	Job       string       `json:"job"`
	Running   bool         `json:"running"`
	Phase     string       `json:"phase"`
	Committed bool         `json:"committed"`
	Started   time.Time    `json:"started"`
	// Deadline: the earliest deadline of the outstanding actions.
	Deadline time.Time `json:"deadline,omitzero"`
	Reason   string    `json:"reason,omitempty"` // why it rolls back
	// NetworkFence is a live checkpoint's fence scope (all | job);
	// FenceFallback says why a job-scoped one fell back to the whole VM's.
	NetworkFence  string   `json:"network_fence,omitempty"`
	FenceFallback string   `json:"network_fence_fallback,omitempty"`
	VMs           []VMView `json:"vms"`
	// Result: the operation's report, once it ended.
	Result *machine.Result `json:"result,omitempty"`
}

// VMView is one VM's part of an operation.
type VMView struct {
	Name string `json:"name"`
	Host string `json:"host"`
	Dest string `json:"dest,omitempty"`
	// Step is the VM's last action; Pending says it is still out.
	Step     machine.ActionType `json:"step,omitempty"`
	Pending  bool               `json:"pending,omitempty"`
	Dir      machine.Direction  `json:"dir,omitempty"`
	Finished bool               `json:"finished,omitempty"`
	Outcome  string             `json:"outcome,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// Cancel effects: what an operator's cancel led to.
const (
	CancelRolledBack = "rolled-back" // it was before the commit point: every VM is as before
	CancelFinished   = "finished"    // it was past the commit point: it went on to its outcome
	CancelNothing    = "nothing"     // it had already ended
)

// CancelReply says what a cancel led to.
type CancelReply struct {
	Op      string `json:"op"`
	Effect  string `json:"effect"`
	Message string `json:"message"`
	View    OpView `json:"operation"`
}

// viewOf reads op (and its fence, nil if none); it runs on the op's
// driver goroutine (or on a journaled Op nobody drives).
func viewOf(op *machine.Op, res *machine.Result, fence *OpFence) OpView {
	v := OpView{ID: op.ID, Kind: op.Kind, Job: op.Job, Running: res == nil, Phase: string(op.Phase),
		Committed: op.Committed, Started: op.StartedAt, Deadline: op.Deadline, Reason: op.Reason, Result: res}
	if fence != nil {
		v.NetworkFence, v.FenceFallback = fence.Scope, fence.Fallback
	}
	for _, s := range op.VMs {
		v.VMs = append(v.VMs, VMView{Name: s.Name, Host: s.Host, Dest: s.Dest, Step: s.Step, Pending: s.Pending != nil,
			Dir: s.Dir, Finished: s.Finished, Outcome: s.Outcome, Error: s.Error})
	}
	if res != nil {
		v.Deadline = time.Time{}
	}
	return v
}

// liveOp is a running operation's window for the API: the view its driver
// publishes, and the inbox through which a cancel reaches the driver.
type liveOp struct {
	inbox chan machine.Event
	done  chan struct{} // closed when the driver returned
	fence *OpFence      // the operation's, fixed at its start

	mu      sync.Mutex
	view    OpView
	changed chan struct{} // closed and replaced at each new view
	err     error         // the driver's error (journal), once done
}

// track registers rec's operation as running until untrack.
func (c *Coord) track(rec *OpRecord) *liveOp {
	lv := &liveOp{inbox: make(chan machine.Event, 1), done: make(chan struct{}), changed: make(chan struct{}),
		fence: rec.Fence, view: viewOf(rec.Op, nil, rec.Fence)}
	c.mu.Lock()
	if c.live == nil {
		c.live = map[string]*liveOp{}
	}
	c.live[rec.Op.ID] = lv
	c.mu.Unlock()
	return lv
}

// untrack publishes the operation's end; its record (with the result, if
// it could be written) is in the journal by now.
func (c *Coord) untrack(lv *liveOp, op *machine.Op, res machine.Result, err error) {
	lv.publish(viewOf(op, &res, lv.fence), err)
	close(lv.done)
	c.mu.Lock()
	delete(c.live, op.ID)
	c.mu.Unlock()
}

// progress returns the driver's Progress hook: it publishes the view,
// then calls next (if any).
func (lv *liveOp) progress(next func(*machine.Op)) func(*machine.Op) {
	return func(op *machine.Op) {
		lv.publish(viewOf(op, nil, lv.fence), nil)
		if next != nil {
			next(op)
		}
	}
}

func (lv *liveOp) publish(v OpView, err error) {
	lv.mu.Lock()
	defer lv.mu.Unlock()
	lv.view, lv.err = v, err
	close(lv.changed)
	lv.changed = make(chan struct{})
}

// snapshot is the latest view and the channel closed at the next one.
func (lv *liveOp) snapshot() (OpView, error, <-chan struct{}) {
	lv.mu.Lock()
	defer lv.mu.Unlock()
	return lv.view, lv.err, lv.changed
}

func (c *Coord) liveOp(id string) *liveOp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live[id]
}

// OpViews lists the running operations, then the journaled ones, newest
// first.
func (c *Coord) OpViews() ([]OpView, error) {
	recs, err := c.Ops()
	if err != nil {
		return nil, err
	}
	views := []OpView{}
	for _, r := range recs {
		if r.Op == nil {
			continue
		}
		if lv := c.liveOp(r.Op.ID); lv != nil {
			v, _, _ := lv.snapshot()
			views = append(views, v)
			continue
		}
		views = append(views, viewOf(r.Op, r.Result, r.Fence))
	}
	slices.SortStableFunc(views, func(a, b OpView) int {
		if a.Running != b.Running {
			if a.Running {
				return -1
			}
			return 1
		}
		return b.Started.Compare(a.Started)
	})
	return views, nil
}

// OpView shows one operation.
func (c *Coord) OpView(id string) (OpView, error) {
	if lv := c.liveOp(id); lv != nil {
		v, _, _ := lv.snapshot()
		return v, nil
	}
	var r OpRecord
	if err := c.store.Get(bucketOps, id, &r); err != nil || r.Op == nil {
		return OpView{}, fmt.Errorf("operation %q: %w", id, ErrNotFound)
	}
	return viewOf(r.Op, r.Result, r.Fence), nil
}

// WatchOp sends each new view of a running operation to send until it
// ends, and returns its last view with the operation's error (the one its
// own command got, so a watcher's exit code says the same).
func (c *Coord) WatchOp(ctx context.Context, id string, send func(OpView)) (OpView, error) {
	lv := c.liveOp(id)
	if lv == nil {
		v, err := c.OpView(id)
		if err != nil || v.Result == nil {
			return v, err
		}
		return v, viewErr(v, nil)
	}
	for {
		v, derr, changed := lv.snapshot()
		if v.Result != nil {
			return v, viewErr(v, derr)
		}
		send(v)
		select {
		case <-changed:
		case <-ctx.Done():
			return v, ctx.Err()
		}
	}
}

// viewErr is a finished operation's error, as its own command reports it.
func viewErr(v OpView, derr error) error {
	return refine(*v.Result, opError(v.Kind, v.Job, *v.Result, derr))
}

// CancelOp delivers a Cancel to a running operation's driver and waits for
// the operation's end: before the commit point it rolls back, after it
// the machine ignores the Cancel and the operation finishes.
func (c *Coord) CancelOp(ctx context.Context, id, reason string) (CancelReply, error) {
	lv := c.liveOp(id)
	if lv == nil {
		v, err := c.OpView(id)
		if err != nil {
			return CancelReply{}, err
		}
		msg := fmt.Sprintf("nothing to cancel: operation %s is not running", id)
		if v.Result != nil {
			msg = fmt.Sprintf("nothing to cancel: operation %s already ended (%s)", id, v.Result.Outcome)
		}
		return CancelReply{Op: id, Effect: CancelNothing, Message: msg, View: v}, nil
	}
	c.log.Info("operation cancel requested", "op", id, "reason", reason)
	delivered := true
	select {
	case lv.inbox <- machine.Cancel{Reason: cmp.Or(reason, "by an operator"), Now: time.Now()}:
	case <-lv.done:
		delivered = false
	case <-ctx.Done():
		return CancelReply{}, ctx.Err()
	}
	select {
	case <-lv.done:
	case <-ctx.Done():
		return CancelReply{}, ctx.Err()
	}
	v, _, _ := lv.snapshot()
	if !delivered {
		return CancelReply{Op: id, Effect: CancelNothing, View: v,
			Message: fmt.Sprintf("nothing to cancel: operation %s ended meanwhile (%s)", id, v.Result.Outcome)}, nil
	}
	return cancelReply(v), nil
}

// cancelReply says what a cancel delivered to v's operation led to.
func cancelReply(v OpView) CancelReply {
	r := CancelReply{Op: v.ID, View: v}
	switch res := v.Result; {
	case res.Committed:
		r.Effect = CancelFinished
		r.Message = fmt.Sprintf("operation %s was past its commit point: it finished (%s)", v.ID, res.Outcome)
	default:
		r.Effect = CancelRolledBack
		r.Message = fmt.Sprintf("operation %s rolled back: %s", v.ID, res.Reason)
	}
	if res := v.Result; len(res.Stranded)+len(res.Lost) > 0 {
		r.Message += fmt.Sprintf("; but lost %v, stranded %v: an operator must look", res.Lost, res.Stranded)
	}
	return r
}

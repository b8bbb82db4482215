package hostd

import (
	"context"
	"fmt"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/symvirt/symvirt/qmp"
)

// frameForwardMax bounds how long a source passes frames on: by then the
// bridges have long learnt the VM's new port from its announcement.
const frameForwardMax = 30 * time.Second

// frameForwardEvery is how often the source sends what its taps caught.
const frameForwardEvery = 5 * time.Millisecond

// frameForwardBefore is how long before the source's pause the frames it
// passes on begin: a frame that reached the tap just before it may be
// neither in the guest nor passed on (still in the tap's queue or in
// QEMU's, which the stream does not carry), and the client would resend it
// only after its retransmission timeout (200 ms and more; seen for
// questions 6 to 37 ms before the pause). A frame the guest did get
// arrives twice: TCP drops the copy.
const frameForwardBefore = 100 * time.Millisecond

// forwardFrom is when the frames a source paused at passes on begin.
func forwardFrom(paused time.Time) time.Time { return paused.Add(-frameForwardBefore) }

// frameInjectTimeout bounds one hand-over of frames to the destination.
const frameInjectTimeout = time.Second

// FramesRequest hands a migration's destination the frames its source's
// tap for NIC received while the VM was paused there.
type FramesRequest struct {
	NIC    string   `json:"nic"`
	Frames [][]byte `json:"frames"`
}

// nicTap is a captured tap of one of the VM's NICs.
type nicTap struct {
	nic string
	tap *frameTap
}

// frameForward passes on, from the moment the source paused for the last
// round, what its taps still receive, until the source is killed.
type frameForward struct {
	cancel context.CancelFunc
	done   chan struct{}
	taps   []nicTap
}

// captureFrames starts capturing on every tap NIC of the VM (before the
// stream starts, so nothing the paused VM misses escapes). A tap that
// cannot be captured is only logged: the VM migrates as before.
func (vm *VM) captureFrames() []nicTap {
	if k := vm.h.cfg.MigrationKeepFrames; k != nil && !*k {
		return nil
	}
	var out []nicTap
	for _, n := range vm.Spec().NICs {
		if n.Backend != "tap" || n.Tap == "" || n.Passthrough {
			continue
		}
		t, err := openFrameTap(n.Tap, n.MAC)
		if err != nil {
			vm.log.Warn("frames for the paused VM will not be passed on", "nic", n.ID, "err", err)
			continue
		}
		out = append(out, nicTap{nic: n.ID, tap: t})
	}
	return out
}

func closeTaps(taps []nicTap) {
	for _, t := range taps {
		t.tap.close()
	}
}

// pausedAt is when the source QEMU stopped the VM for the last round: its
// STOP event's time, else the completion less QEMU's downtime.
func pausedAt(stops <-chan goqmp.Event, downtime time.Duration) time.Time {
	at := timeNow().Add(-downtime)
	for {
		select {
		case ev, ok := <-stops:
			if !ok {
				return at
			}
			at = time.Unix(ev.Timestamp.Seconds, ev.Timestamp.Microseconds*1000)
		default:
			return at
		}
	}
}

// forwardFrames sends dest, for the VM's copy there, the frames taps
// captured from frameForwardBefore before since (the pause) on, every few
// milliseconds, until stopFrames.
func (vm *VM) forwardFrames(taps []nicTap, dest string, since time.Time) {
	if len(taps) == 0 {
		return
	}
	since = forwardFrom(since)
	ctx, cancel := context.WithTimeout(context.Background(), frameForwardMax)
	f := &frameForward{cancel: cancel, done: make(chan struct{}), taps: taps}
	vm.mu.Lock()
	old := vm.frames
	vm.frames = f
	vm.mu.Unlock()
	old.stop()
	go func() {
		defer close(f.done)
		defer closeTaps(taps)
		peer := vm.h.peer(dest)
		tick := time.NewTicker(frameForwardEvery)
		defer tick.Stop()
		for {
			for _, t := range taps {
				frames := t.tap.take(since)
				if len(frames) == 0 {
					continue
				}
				// Bounded: a Kill here waits for the last pass.
				cctx, cancel := context.WithTimeout(context.Background(), frameInjectTimeout)
				err := peer.InjectFrames(cctx, vm.name, FramesRequest{NIC: t.nic, Frames: frames})
				cancel()
				vm.log.Info("frames re-sent", "to", dest, "nic", t.nic, "frames", len(frames), "unicast", unicast(frames), "err", err)
			}
			if ctx.Err() != nil {
				return // after a last pass
			}
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
}

// announce has QEMU announce the VM's NICs now that it runs here: the
// bridges learn its new port at once (QEMU's own announcement after the
// stream was queued while the VM was paused, until the guest's first
// frame), and clients' frames stop reaching the source.
func (vm *VM) announce(ctx context.Context, mon *qmp.Client) {
	args := map[string]any{"initial": 1, "max": 100, "rounds": 3, "step": 50}
	if err := mon.Execute(ctx, "announce-self", args, nil); err != nil {
		vm.log.Warn("announce-self", "err", err)
	}
}

// unicast counts the frames addressed to one station (the VM).
func unicast(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		if f[0]&1 == 0 {
			n++
		}
	}
	return n
}

// stopFrames ends the VM's frame forwarding (its source copy is killed or
// runs again) after a last pass.
func (vm *VM) stopFrames() {
	vm.mu.Lock()
	f := vm.frames
	vm.frames = nil
	vm.mu.Unlock()
	f.stop()
}

func (f *frameForward) stop() {
	if f == nil {
		return
	}
	f.cancel()
	<-f.done
}

// InjectFrames queues frames on the tap of one of the VM's NICs: a
// migration's source passes on what reached it while paused.
func (vm *VM) InjectFrames(ctx context.Context, req FramesRequest) (int, error) {
	for _, n := range vm.Spec().NICs {
		if n.ID == req.NIC && n.Backend == "tap" && n.Tap != "" {
			return injectFrames(n.Tap, req.Frames)
		}
	}
	return 0, fmt.Errorf("vm %q has no tap NIC %q: %w", vm.name, req.NIC, ErrInvalidSpec)
}

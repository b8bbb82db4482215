package hostd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/qmp"
)

// The peer hold is the job-scoped network fence (StepRequest.Fence.Peers):
// a cut is inconsistent only if a message sent after its sender's point
// reaches a VM before that one's point. So each VM holds the frames it
// receives from the job's other VMs, from the fence step (which every VM
// of the job has answered before any point step is sent) until its own
// point, and releases them there: a frame from a peer past its point
// arrives after the receiver's point, and one sent before its sender's
// point but held is a message in flight at the cut (lost for the
// checkpoint; TCP sends it again after a restart). Every other frame
// flows, so a peer outside the job sees no more than the VM's own pause,
// and a VM's hold ends at its own point, not the job's last.
//
// Frames are told apart by their source MAC: the job's VMs must reach each
// other on one Ethernet segment (a router would put its own address on
// them), which is why the coordinator only asks for it where a job says
// so. A guest that sends with a peer's address can only have its frames to
// this VM delayed for one checkpoint; one of the job's guests that sends
// with another address can only make its own job's cut inconsistent.
//
// The frames pass through hostd while the hold is up: on each fenced NIC
// a QEMU filter-redirector (queue tx: from the netdev to the NIC) writes every frame the VM receives
// to a socket whose other end hostd holds and injects what hostd writes
// back into the other; QEMU's ends are passed over the monitor, so no
// socket file is ever reachable by another local user. QEMU writes a
// frame with its main loop waiting on the socket: hostd reads without a
// pause and never blocks its reader on the injecting side, and whatever it
// cannot keep (holdMaxFrames, holdMaxBytes, a full relay queue) it drops.

const (
	// holdMaxFrames and holdMaxBytes bound what one NIC holds: no more
	// than its relay's queue takes at the release.
	holdMaxFrames = relayQueue
	holdMaxBytes  = relayQueueBytes
	holdMaxRecord = 256 << 10
	// relayQueue and relayQueueBytes bound the frames waiting to be
	// injected on one NIC.
	relayQueue      = 4096
	relayQueueBytes = 16 << 20
	// relayWriteTimeout bounds one injection: QEMU reads the socket in
	// its main loop.
	relayWriteTimeout = time.Second
)

// ErrHoldLost: the job-scoped fence this VM put up went with a hostd that
// restarted before the VM's point; QEMU passed the peers' frames on since,
// so the VM's point cannot be part of a consistent cut.
var ErrHoldLost = errors.New("network hold lost: hostd restarted")

func holdFilterID(nic string) string { return "symvirt-hold-" + nic }
func holdOutID(nic string) string    { return "symvirt-hold-out-" + nic }
func holdInID(nic string) string     { return "symvirt-hold-in-" + nic }

// peerHold holds, on every fenced NIC of one VM, the frames from peers.
type peerHold struct {
	op     string
	peers  map[string]bool // lower-case MACs
	relays []*frameRelay
	log    *slog.Logger
	// observe gets how long the hold held and how many frames it dropped.
	observe func(held time.Duration, dropped int)
	mu      sync.Mutex
	holding bool
	since   time.Time
}

// holdPeers puts the peer hold up on the VM's fenced NICs; on failure
// nothing of it stays.
func (vm *VM) holdPeers(ctx context.Context, mon *qmp.Client, op string, args *FenceArgs) error {
	peers, err := args.PeerSet()
	if err != nil {
		return err
	}
	vm.mu.Lock()
	old := vm.hold
	vm.mu.Unlock()
	if old != nil && old.op == op {
		return nil // a repeated fence step
	}
	if old != nil {
		vm.dropHold(ctx)
	}
	h := &peerHold{op: op, peers: peers, log: vm.log, holding: true, since: timeNow(),
		observe: func(held time.Duration, dropped int) {
			vm.h.metrics.hold.Observe(held.Seconds())
			vm.h.metrics.holdDropped.Add(float64(dropped))
		}}
	for _, nic := range vm.fencedNICs() {
		r, err := startRelay(ctx, mon, nic, h)
		if err != nil {
			h.teardown(context.WithoutCancel(ctx), mon)
			return fmt.Errorf("vm %q: network hold on %q: %w", vm.name, nic, err)
		}
		h.relays = append(h.relays, r)
	}
	vm.mu.Lock()
	vm.hold = h
	vm.rt.Hold = op
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.log.Info("network hold up: frames from the job's other VMs wait for this VM's point", "nics", len(h.relays), "peers", len(peers))
	return nil
}

// holdFor is the peer hold of operation op on this VM, nil if it has none;
// ErrHoldLost if it had one that a hostd restart took.
func (vm *VM) holdFor(op string) (*peerHold, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.hold != nil && vm.hold.op == op {
		return vm.hold, nil
	}
	if vm.rt.Hold == op && op != "" {
		return nil, fmt.Errorf("vm %q, operation %s: %w", vm.name, op, ErrHoldLost)
	}
	return nil, nil
}

// releaseHold lets the held frames through (the VM's point is taken) and
// takes the relays down in the background.
func (vm *VM) releaseHold() {
	vm.mu.Lock()
	h := vm.hold
	vm.mu.Unlock()
	if h == nil || !h.release() {
		return
	}
	mon, err := vm.monitor()
	if err != nil {
		return
	}
	go vm.takeDownHold(context.Background(), mon, h)
}

// dropHold releases and takes down the VM's peer hold, if any, and the
// QEMU objects one a gone hostd left.
func (vm *VM) dropHold(ctx context.Context) {
	vm.mu.Lock()
	h, lost := vm.hold, vm.rt.Hold != ""
	vm.mu.Unlock()
	mon, err := vm.monitor()
	if err != nil || (h == nil && !lost) {
		return
	}
	if h == nil {
		h = &peerHold{log: vm.log}
	}
	h.release()
	vm.takeDownHold(ctx, mon, h)
}

// takeDownHold removes hold h's relays from QEMU (and a lost hold's
// objects, which name every fenced NIC) and forgets it.
func (vm *VM) takeDownHold(ctx context.Context, mon *qmp.Client, h *peerHold) {
	if len(h.relays) == 0 {
		for _, nic := range vm.fencedNICs() {
			h.relays = append(h.relays, &frameRelay{nic: nic})
		}
	}
	h.teardown(ctx, mon)
	vm.mu.Lock()
	if vm.hold == h || h.op == "" {
		vm.hold = nil
		vm.rt.Hold = ""
		vm.saveRuntime()
	}
	vm.mu.Unlock()
}

// settleLostHold, when hostd adopts a QEMU, takes down the relays of a
// peer hold the hostd before it left: QEMU drops every frame it cannot
// write to them. The persisted mark stays until the operation's resume,
// so that the VM's point step is refused.
func (vm *VM) settleLostHold(mon *qmp.Client) {
	vm.mu.Lock()
	op := vm.rt.Hold
	vm.mu.Unlock()
	if op == "" {
		return
	}
	h := &peerHold{op: "lost", log: vm.log}
	for _, nic := range vm.fencedNICs() {
		h.relays = append(h.relays, &frameRelay{nic: nic})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.teardown(ctx, mon)
	vm.log.Warn("network hold of an operation lost with the hostd before: its point will be refused", "op", op)
}

// release ends the holding: what was held goes first, then every frame
// flows. It reports whether the hold was still holding.
func (h *peerHold) release() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.holding {
		return false
	}
	h.holding = false
	n, dropped := 0, 0
	for _, r := range h.relays {
		n += len(r.held)
		dropped += r.dropped
		for _, f := range r.held {
			r.send(f)
		}
		r.held, r.heldBytes = nil, 0
	}
	held := timeNow().Sub(h.since)
	h.log.Info("network hold released", "held_ns", held.Nanoseconds(), "frames", n, "dropped", dropped)
	if h.observe != nil {
		h.observe(held, dropped)
	}
	return true
}

// route holds a frame from a peer while holding, and sends on any other.
func (h *peerHold) route(r *frameRelay, rec []byte, src string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.holding || !h.peers[src] {
		r.send(rec)
		return
	}
	if len(r.held) >= holdMaxFrames || r.heldBytes+len(rec) > holdMaxBytes {
		r.dropped++
		return
	}
	r.held = append(r.held, rec)
	r.heldBytes += len(rec)
}

// teardown removes the relays' filters and chardevs from QEMU, after the
// frames queued for injection went in (bounded by ctx), and closes
// hostd's ends.
func (h *peerHold) teardown(ctx context.Context, mon *qmp.Client) {
	for _, r := range h.relays {
		r.drain(ctx)
	}
	for _, r := range h.relays {
		var errs []string
		for _, c := range []struct{ cmd, id string }{{"object-del", holdFilterID(r.nic)},
			{"chardev-remove", holdOutID(r.nic)}, {"chardev-remove", holdInID(r.nic)}} {
			arg := map[string]any{"id": c.id}
			if err := mon.Execute(ctx, c.cmd, arg, nil); err != nil && !strings.Contains(err.Error(), "not found") {
				errs = append(errs, c.cmd+" "+c.id+": "+err.Error())
			}
		}
		r.close()
		if len(errs) > 0 && r.out != nil {
			h.log.Warn("network hold: taking it down", "nic", r.nic, "errs", errs)
		}
	}
}

// holdPair is a connected stream socket pair: hostd's end as a net.Conn,
// QEMU's as a file to pass over the monitor.
func holdPair() (net.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	for _, fd := range fds {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	mine := os.NewFile(uintptr(fds[0]), "hold")
	defer mine.Close()
	c, err := net.FileConn(mine)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "hold-qemu"), nil
}

// chardevOnFD adds a socket chardev over the descriptor f, passed to QEMU
// under the chardev's id.
func chardevOnFD(ctx context.Context, mon *qmp.Client, id string, f *os.File) error {
	defer f.Close()
	if err := mon.GetFD(ctx, id, f); err != nil {
		return err
	}
	err := mon.Execute(ctx, "chardev-add", map[string]any{"id": id, "backend": map[string]any{
		"type": "socket", "data": map[string]any{"server": false,
			"addr": map[string]any{"type": "fd", "data": map[string]any{"str": id}}}}}, nil)
	if err != nil {
		mon.CloseFD(context.WithoutCancel(ctx), id)
	}
	return err
}

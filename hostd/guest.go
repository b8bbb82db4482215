package hostd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/hostd/qemu"
)

// guestPort is the vsock port guestd listens on.
const guestPort = 1024

// dialGuest opens the VM's guest channel. The guest is untrusted: the
// connection is only ever used through guestproto.Host, which bounds every
// read and wait.
func (vm *VM) dialGuest(ctx context.Context) (net.Conn, error) {
	spec := vm.Spec()
	switch spec.Guest.Type {
	case "virtio-serial":
		var d net.Dialer
		vm.mu.Lock()
		gen := vm.rt.Gen
		vm.mu.Unlock()
		return d.DialContext(ctx, "unix", qemu.GuestSocket(vm.dir, gen))
	case "vsock":
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			c, err := dialVsockPrivileged(spec.Guest.CID, guestPort)
			ch <- res{c, err}
		}()
		select {
		case r := <-ch:
			return r.c, r.err
		case <-ctx.Done():
			go func() {
				if r := <-ch; r.c != nil {
					r.c.Close()
				}
			}()
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("vm %q has no guest channel", vm.name)
}

// connectGuest opens the channel and completes a handshake, retrying with
// short attempts until ctx ends: a HELLO sent before guestd has opened its
// port is dropped by the guest kernel, and a guest still finishing a round
// reports itself busy.
func (vm *VM) connectGuest(ctx context.Context) (*guestproto.Host, guestproto.HelloAck, error) {
	var last error
	for {
		conn, err := vm.dialGuest(ctx)
		if err == nil {
			host := guestproto.NewHost(conn, vm.log.With("channel", vm.Spec().Guest.Type))
			actx, cancel := context.WithTimeout(ctx, time.Second)
			ack, herr := host.Handshake(actx)
			cancel()
			busy := herr == nil && (ack.State == guestproto.StatePreparing || ack.State == guestproto.StateFinishing)
			if herr == nil && !busy {
				return host, ack, nil
			}
			host.Close()
			err = herr
			if busy {
				err = fmt.Errorf("guest busy (%s)", ack.State)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, guestproto.HelloAck{}, fmt.Errorf("%w (last attempt: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// coop is one cooperation round with a VM's guest. A nil or empty coop
// (no channel, or skipped) does nothing, so operations call it blindly.
type coop struct {
	vm     *VM
	host   *guestproto.Host
	r      *Round
	done   bool
	timing guestproto.Timing // the guest's account of its prepare
}

func newRoundID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// prepareGuest runs PREPARE and waits for READY, bounded by GuestTimeout.
// A guest that refuses, never answers or misbehaves fails the operation
// before anything was done to the VM. With freeze (a dependency-aware
// migration) the guest also freezes every process that does not depend on
// the world outside the VM until the round ends.
func (vm *VM) prepareGuest(ctx context.Context, op string, freeze bool) (*coop, error) {
	c := &coop{vm: vm}
	spec := vm.Spec()
	if spec.Guest.Type == "none" {
		return c, nil
	}
	timeout := vm.h.cfg.GuestTimeout
	gctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := timeNow()
	host, ack, err := vm.connectGuest(gctx)
	if err != nil {
		vm.h.metrics.observe("guest_prepare", "error", start)
		return nil, fmt.Errorf("vm %q: %w: no handshake: %v", vm.name, ErrGuest, err)
	}
	if ack.PendingID != "" {
		// A round whose outcome never reached the guest (a host crashed
		// in between): end it before starting another.
		vm.log.Warn("guest has a stale round; aborting it", "round", ack.PendingID, "op", ack.PendingOp)
		if err := host.Abort(gctx, ack.PendingID, "stale round"); err != nil {
			host.Close()
			return nil, fmt.Errorf("vm %q: %w: abort stale round: %v", vm.name, ErrGuest, err)
		}
	}
	id := newRoundID()
	// The guest gets a little less time than we wait, so its REFUSED (with
	// the reason) arrives before our own deadline.
	guestDeadline := timeout - timeout/5
	var devs []guestproto.Device
	if op != "detach" { // a drill hands off nothing
		devs = vm.guestDevices()
	}
	p := guestproto.Prepare{ID: id, Op: op, Deadline: guestDeadline, Devices: devs, Freeze: freeze}
	tm, err := host.PrepareTimed(gctx, p)
	if err != nil {
		// REFUSED means the guest already undid its round; anything else
		// (deadline, dead channel) needs an explicit ABORT.
		if !errors.Is(err, guestproto.ErrRefused) {
			actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			host.Abort(actx, id, "host gave up: "+err.Error())
			acancel()
		}
		host.Close()
		vm.h.metrics.observe("guest_prepare", "error", start)
		return nil, fmt.Errorf("vm %q: %w: %v", vm.name, ErrGuest, err)
	}
	vm.h.metrics.observe("guest_prepare", "ok", start)
	vm.log.Info("guest ready", "op", op, "round", id, "took", timeNow().Sub(start),
		"guest_took", tm.Took(), "apps_took", tm.Apps())
	c.host, c.r, c.timing = host, &Round{ID: id, Op: op}, tm
	return c, nil
}

// guestDevices tells the guest which NICs are about to go away, by MAC, so
// it can move traffic off them.
func (vm *VM) guestDevices() []guestproto.Device {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	over := vm.overrides()
	var out []guestproto.Device
	for _, n := range vm.spec.NICs {
		if !n.Passthrough {
			continue
		}
		mac := n.MAC
		if m := over[n.ID]["mac"]; m != "" {
			mac = m
		}
		out = append(out, guestproto.Device{ID: n.ID, MAC: mac})
	}
	for _, d := range vm.spec.Devs {
		if d.Passthrough {
			out = append(out, guestproto.Device{ID: d.ID})
		}
	}
	return out
}

// finish ends the round on the open channel: RESUME with the outcome, or
// ABORT. The guest is told best-effort: the VM runs either way.
func (c *coop) finish(ctx context.Context, outcome string) {
	if c == nil || c.host == nil || c.done {
		return
	}
	c.done = true
	ctx, cancel := context.WithTimeout(ctx, c.vm.h.cfg.GuestTimeout)
	defer cancel()
	var err error
	if outcome == "aborted" {
		err = c.host.Abort(ctx, c.r.ID, "operation aborted")
	} else {
		err = c.host.Resume(ctx, c.r.ID, outcome)
	}
	c.host.Close()
	if err != nil {
		c.vm.log.Warn("guest did not acknowledge the outcome", "round", c.r.ID, "outcome", outcome, "err", err)
	}
}

// keep closes the channel but leaves the round open in the guest: the
// outcome is delivered later, by another QEMU or another host
// (finishRound).
func (c *coop) keep() {
	if c == nil || c.host == nil || c.done {
		return
	}
	c.done = true
	c.host.Close()
	c.vm.mu.Lock()
	c.vm.rt.Round = c.r
	c.vm.saveRuntime()
	c.vm.mu.Unlock()
}

// finishRound tells the guest the outcome of a round it entered in
// another QEMU (restore, migration destination). It reconnects, reads the
// pending round from the handshake, and resumes it.
func (vm *VM) finishRound(ctx context.Context, outcome string) {
	spec := vm.Spec()
	if spec.Guest.Type == "none" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, vm.h.cfg.GuestTimeout)
	defer cancel()
	host, ack, err := vm.connectGuest(ctx)
	if err != nil {
		vm.log.Warn("guest channel for outcome", "err", err)
		return
	}
	defer host.Close()
	if ack.PendingID == "" {
		vm.log.Info("guest has no pending round", "outcome", outcome)
		return
	}
	if outcome == "aborted" {
		err = host.Abort(ctx, ack.PendingID, "operation aborted")
	} else {
		err = host.Resume(ctx, ack.PendingID, outcome)
	}
	if err != nil {
		vm.log.Warn("guest did not acknowledge the outcome", "round", ack.PendingID, "err", err)
		return
	}
	vm.mu.Lock()
	vm.rt.Round = nil
	vm.saveRuntime()
	vm.mu.Unlock()
	vm.log.Info("guest told", "round", ack.PendingID, "op", ack.PendingOp, "outcome", outcome)
}

// DrillResult times one cooperation round that changes nothing.
type DrillResult struct {
	Ready time.Duration `json:"ready_ns"` // connect to READY
	Round time.Duration `json:"round_ns"` // connect to the guest's DONE
	// Apps is the registered applications' own time to reach their safe
	// point (the longest), as the guest measured it: Round minus Apps is
	// what cooperating costs. The guest is not trusted: for reports only.
	Apps time.Duration `json:"apps_ns"`
	// GuestPrepare is the guest's time from PREPARE to READY (Apps
	// included), as it measured it.
	GuestPrepare time.Duration `json:"guest_prepare_ns"`
}

// Drill runs a cooperation round and aborts it: the guest's hooks and
// applications reach their safe point and are released with "aborted".
// It checks that a guest cooperates, and times the round, without
// touching the VM.
func (vm *VM) Drill(ctx context.Context) (DrillResult, error) {
	if err := vm.lock("drill"); err != nil {
		return DrillResult{}, err
	}
	defer vm.unlock()
	if vm.Spec().Guest.Type == "none" {
		return DrillResult{}, fmt.Errorf("vm %q has no guest channel: %w", vm.name, ErrInvalidState)
	}
	start := timeNow()
	c, err := vm.prepareGuest(ctx, "detach", false)
	if err != nil {
		return DrillResult{}, err
	}
	ready := timeNow()
	c.finish(ctx, "aborted")
	return DrillResult{Ready: ready.Sub(start), Round: timeNow().Sub(start),
		Apps: c.timing.Apps(), GuestPrepare: c.timing.Took()}, nil
}

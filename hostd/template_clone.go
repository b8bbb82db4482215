package hostd

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/hostd/snapshot"
)

// CloneRequest asks for a VM started from a template.
type CloneRequest struct {
	Template string `json:"template"`
	Name     string `json:"name"`
	// Hostname is the clone's (default: its name).
	Hostname string `json:"hostname,omitempty"`
	// NICs override, by id, what a clone cannot share with the template:
	// a tap of its own, a MAC (default: a random one), an address.
	NICs []CloneNIC `json:"nics,omitempty"`
}

// CloneNIC is one NIC of a clone.
type CloneNIC struct {
	ID  string `json:"id"`
	Tap string `json:"tap,omitempty"`
	MAC string `json:"mac,omitempty"`
	IP  string `json:"ip,omitempty"` // address/prefix the guest sets
}

// CloneResult reports one clone: Ready is from the request to guestd's
// DONE (its new identity taken), with the phases in between.
type CloneResult struct {
	VM       string            `json:"vm"`
	Template string            `json:"template"`
	PID      int               `json:"pid"`
	MACs     map[string]string `json:"macs"`
	Ready    time.Duration     `json:"ready_ns"`
	// Start: QEMU up; Load: device state in and vCPUs running; Guest:
	// guestd reached (Handshake of it) and its CLONE done.
	Start     time.Duration `json:"start_ns"`
	Load      time.Duration `json:"load_ns"`
	Guest     time.Duration `json:"guest_ns"`
	Handshake time.Duration `json:"handshake_ns"`
	// Standby: the clone was one of the template's pool, started before
	// the request (Start and Load are then the time to take it).
	Standby bool `json:"standby,omitempty"`
}

// Clone starts a VM from a template: the template's RAM file mapped
// private copy-on-write (the clone's writes stay its own, untouched pages
// are shared by every clone), its device state loaded, then guestd told
// it is a clone (new entropy, machine-id, hostname, MACs) before the
// clone counts as ready. A clone that fails is removed.
func (h *Host) Clone(ctx context.Context, req CloneRequest) (res CloneResult, err error) {
	start := timeNow()
	defer func() { h.metrics.observe("clone", resultLabel(err), start) }()
	res = CloneResult{VM: req.Name, Template: req.Template}
	t, err := h.Template(req.Template)
	if err != nil {
		return res, err
	}
	if req.Hostname == "" {
		req.Hostname = strings.NewReplacer("_", "-", ".", "-").Replace(req.Name)
	}
	if !guestproto.ValidHostname(req.Hostname) {
		return res, fmt.Errorf("clone %q: hostname %q: %w", req.Name, req.Hostname, ErrInvalidSpec)
	}
	spec, nics, err := cloneSpec(t, req)
	if err != nil {
		return res, err
	}
	if s := h.standbyFor(req); s != nil {
		spec, err = h.cloneFromStandby(ctx, t, req, s, start, &res)
	} else {
		err = h.cloneCold(ctx, t, spec, req, nics, start, &res)
	}
	if err != nil {
		return res, err
	}
	res.Ready = timeNow().Sub(start)
	res.Guest = res.Ready - res.Load
	res.MACs = map[string]string{}
	for _, n := range spec.NICs {
		res.MACs[n.ID] = n.MAC
	}
	h.log.Info("clone ready", "vm", req.Name, "template", t.Name, "ready", res.Ready, "start", res.Start, "load", res.Load, "standby", res.Standby)
	return res, nil
}

// cloneCold starts a clone's QEMU now: the request waits for QEMU's
// start, the state's load and the guest's first work.
func (h *Host) cloneCold(ctx context.Context, t Template, spec Spec, req CloneRequest, nics []guestproto.CloneNIC, start time.Time, res *CloneResult) error {
	ram, state, err := h.openTemplate(t)
	if err != nil {
		return err
	}
	defer ram.Close()
	defer state.Close()
	vm, err := h.Create(spec)
	if err != nil {
		return err
	}
	c := newCloneIdentity(req.Hostname, nics)
	var conn net.Conn
	if err = vm.saveCloneIdentity(c); err == nil {
		err = vm.locked("clone", func() error { conn, err = vm.startClone(ctx, ram, state, t.State, start, res); return err })
	}
	if err == nil {
		res.Handshake, err = vm.tellClone(ctx, conn, c)
	}
	if err != nil {
		vm.kill()
		h.Delete(vm.name)
		return fmt.Errorf("clone %q of template %q: %w", req.Name, t.Name, err)
	}
	return nil
}

// cloneSpec is the clone's VM: the template's, renamed, its RAM its own
// (private), each NIC with a MAC and tap of its own; and what guestd is
// told of the NICs.
func cloneSpec(t Template, req CloneRequest) (Spec, []guestproto.CloneNIC, error) {
	spec := t.Spec
	off := false
	spec.Name, spec.SharedMemory = req.Name, &off
	spec.NICs = append([]NIC(nil), t.Spec.NICs...)
	over := map[string]CloneNIC{}
	for _, n := range req.NICs {
		over[n.ID] = n
	}
	var nics []guestproto.CloneNIC
	for i, n := range spec.NICs {
		o, ok := over[n.ID]
		delete(over, n.ID)
		if n.Backend == "tap" && o.Tap == "" {
			return spec, nil, fmt.Errorf("clone %q: nic %s: a tap NIC needs a tap of its own: %w", req.Name, n.ID, ErrInvalidSpec)
		}
		if ok && o.Tap != "" {
			spec.NICs[i].Tap = o.Tap
		}
		spec.NICs[i].MAC = o.MAC
		if o.MAC == "" {
			spec.NICs[i].MAC = randomMAC()
		}
		nics = append(nics, guestproto.CloneNIC{OldMAC: n.MAC, MAC: spec.NICs[i].MAC, IP: o.IP})
	}
	for id := range over {
		return spec, nil, fmt.Errorf("clone %q: template %q has no nic %q: %w", req.Name, t.Name, id, ErrInvalidSpec)
	}
	return spec, nics, spec.Validate()
}

// startClone runs the clone's QEMU on the template's RAM (private) and
// device state, and its vCPUs; callers hold vm.op.
func (vm *VM) startClone(ctx context.Context, ram, state *os.File, digest manifest.FileDigest, start time.Time, res *CloneResult) (net.Conn, error) {
	if err := vm.allocateSlots(nil); err != nil {
		return nil, err
	}
	l := launch{incoming: true}
	vm.mu.Lock()
	bin, a := vm.qemuBinary(), vm.args(l, vm.rt.Gen)
	vm.mu.Unlock()
	if err := vm.h.leanClone(&a); err != nil {
		return nil, err
	}
	p, err := qemu.Start(ctx, bin, a, ram)
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", vm.name, err)
	}
	vm.install(p, l)
	res.PID, res.Start = p.PID, timeNow().Sub(start)
	// Connected before the state loads, as the template's was when it was
	// saved: the guest sees no hang-up, and guestd reads the HELLO at once.
	conn, err := vm.dialGuest(ctx)
	if err != nil {
		return nil, err
	}
	if err := vm.loadClone(ctx, p, state, digest); err != nil {
		conn.Close()
		return nil, err
	}
	res.Load = timeNow().Sub(start)
	return conn, nil
}

// loadClone loads the template's device state into the clone's QEMU and
// runs it.
func (vm *VM) loadClone(ctx context.Context, p *qemu.Process, state *os.File, digest manifest.FileDigest) error {
	if err := loadTemplateState(ctx, p, state, digest); err != nil {
		return err
	}
	vm.mu.Lock()
	vm.rt.Incoming = false
	vm.saveRuntime()
	vm.mu.Unlock()
	return p.Mon.Cont(ctx)
}

// loadTemplateState loads a template's device state into p, a QEMU
// started incoming on the template's RAM file, without RAM
// (x-ignore-shared): the RAM is the file.
func loadTemplateState(ctx context.Context, p *qemu.Process, state *os.File, digest manifest.FileDigest) error {
	// events: QEMU says when the load completed (a MIGRATION event), so
	// the wait for it is not a poll.
	if err := p.Mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true, "events": true}); err != nil {
		return err
	}
	if err := snapshot.Load(ctx, p.Mon, state, digest, nil); err != nil {
		return fmt.Errorf("load the template's device state: %w", err)
	}
	// Later migrations of the clone carry its RAM.
	return p.Mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": false})
}

// tellClone sends guestd its new identity and waits until it took it.
// conn is the guest channel, connected before the clone ran.
func (vm *VM) tellClone(ctx context.Context, conn net.Conn, c guestproto.Clone) (time.Duration, error) {
	gctx, cancel := context.WithTimeout(ctx, vm.h.cfg.GuestTimeout)
	defer cancel()
	start := timeNow()
	host := guestproto.NewHost(conn, vm.log.With("channel", "virtio-serial"))
	hctx, hcancel := context.WithTimeout(gctx, time.Second)
	_, err := host.Handshake(hctx)
	hcancel()
	if err != nil { // a guest that missed it: the usual retries
		host.Close()
		vm.log.Warn("clone: first handshake failed; retrying", "err", err)
		if host, _, err = vm.connectGuest(gctx); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrGuest, err)
		}
	}
	defer host.Close()
	took := timeNow().Sub(start)
	if err := host.Clone(gctx, newRoundID(), c); err != nil {
		return took, fmt.Errorf("%w: %w", ErrGuest, err)
	}
	return took, nil
}

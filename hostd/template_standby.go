package hostd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/hostd/qemu"
)

// standby is a clone made ahead of requests: running, its guestd
// connected and holding a placeholder identity.
type standby struct {
	name  string
	dir   string // under the template's directory until a request takes it
	spec  Spec   // as started: the template's, its NICs with MACs of their own
	proc  *qemu.Process
	guest *guestproto.Host
	log   *slog.Logger
}

// standbyDir is where a template's standby clones run until taken.
func (h *Host) standbyDir(tmpl string) string {
	dir, _ := h.templateDir(tmpl)
	return filepath.Join(dir, "standby")
}

// startStandby starts standby clone n of a template: QEMU on the
// template's RAM file (private) and device state, run, its guestd reached
// and given a placeholder identity (CLONE with Standby). The guest's
// first work after a template's state loads (TCG translating the
// kernel's and guestd's code again, guestd's wake-up) happens here,
// before any request.
func (h *Host) startStandby(ctx context.Context, tmpl string, n int) (*standby, error) {
	t, err := h.Template(tmpl)
	if err != nil {
		return nil, err
	}
	// Unique across pools: a pool set again may meet its predecessor's
	// standbys still going.
	tag := make([]byte, 3)
	rand.Read(tag)
	s := &standby{name: "standby-" + strconv.Itoa(n) + "-" + hex.EncodeToString(tag)}
	s.dir = filepath.Join(h.standbyDir(tmpl), s.name)
	s.log = h.log.With("template", tmpl, "standby", s.name)
	spec, nics, err := cloneSpec(t, CloneRequest{Template: tmpl, Name: s.name})
	if err != nil {
		return nil, err
	}
	s.spec = spec
	if err := mkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	if err := s.run(ctx, h, t, nics); err != nil {
		s.stop()
		return nil, fmt.Errorf("template %q: standby clone %s: %w", tmpl, s.name, err)
	}
	s.log.Info("standby clone ready", "pid", s.proc.PID)
	return s, nil
}

// run starts the standby's QEMU, loads and runs the template's state,
// and tells guestd its placeholder identity.
func (s *standby) run(ctx context.Context, h *Host, t Template, nics []guestproto.CloneNIC) error {
	ram, state, err := h.openTemplate(t)
	if err != nil {
		return err
	}
	defer ram.Close()
	defer state.Close()
	a := qemu.Args{Spec: s.spec, Dir: s.dir, Accel: h.cfg.Accel, Incoming: true, RunAs: h.cfg.QEMUUser}
	if err := h.leanClone(&a); err != nil {
		return err
	}
	if s.proc, err = qemu.Start(ctx, h.cfg.QEMU, a, ram); err != nil {
		return err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", qemu.GuestSocket(s.dir, 0))
	if err != nil {
		return err
	}
	if err := loadTemplateState(ctx, s.proc, state, t.State); err != nil {
		conn.Close()
		return err
	}
	if err := s.proc.Mon.Cont(ctx); err != nil {
		conn.Close()
		return err
	}
	gctx, cancel := context.WithTimeout(ctx, h.cfg.GuestTimeout)
	defer cancel()
	s.guest = guestproto.NewHost(conn, s.log.With("channel", "virtio-serial"))
	if _, err := s.guest.Handshake(gctx); err != nil {
		return fmt.Errorf("%w: %w", ErrGuest, err)
	}
	c := newCloneIdentity(s.name, nics)
	c.Standby = true
	if err := s.guest.Clone(gctx, newRoundID(), c); err != nil {
		return fmt.Errorf("%w: %w", ErrGuest, err)
	}
	return nil
}

// newCloneIdentity is a CLONE's body: fresh host randomness and
// machine-id, the hostname and NICs given.
func newCloneIdentity(hostname string, nics []guestproto.CloneNIC) guestproto.Clone {
	seed, mid := make([]byte, 64), make([]byte, 16)
	rand.Read(seed)
	rand.Read(mid)
	return guestproto.Clone{Seed: hex.EncodeToString(seed), MachineID: hex.EncodeToString(mid),
		Hostname: hostname, NICs: nics}
}

// stop kills a standby clone that no request took and removes its
// directory.
func (s *standby) stop() {
	if s.guest != nil {
		s.guest.Close()
	}
	if s.proc != nil {
		s.proc.Kill()
	}
	os.RemoveAll(s.dir)
}

// reapStandbys kills every standby clone an earlier hostd left (it
// crashed: Close stops them): pools start empty with hostd.
func (h *Host) reapStandbys() {
	ents, _ := os.ReadDir(h.templatesDir())
	for _, e := range ents {
		h.removeStaleStandbys(e.Name())
	}
}

// removeStaleStandbys kills the standby clones an earlier hostd left (a
// crash: Close stops them) and removes their directories.
func (h *Host) removeStaleStandbys(tmpl string) {
	dir := h.standbyDir(tmpl)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		sdir := filepath.Join(dir, e.Name())
		data, _ := os.ReadFile(filepath.Join(sdir, "qemu.pid"))
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && qemu.Owns(sdir, pid, 0) {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
		os.RemoveAll(sdir)
	}
}

// standbyFor takes a standby clone of the request's template, nil if
// its pool has none or the request needs what a standby cannot give (a
// tap of its own: a standby's NICs are fixed when its QEMU starts).
func (h *Host) standbyFor(req CloneRequest) *standby {
	for _, n := range req.NICs {
		if n.Tap != "" {
			return nil
		}
	}
	if p := h.pool(req.Template); p != nil {
		return p.take()
	}
	return nil
}

// cloneFromStandby makes a standby clone the requested one: it becomes
// VM req.Name (its files move into the VM's directory) and guestd takes
// the clone's own identity (new entropy again, machine-id, hostname,
// MACs) before it counts as ready; then its clone hooks run.
func (h *Host) cloneFromStandby(ctx context.Context, t Template, req CloneRequest, s *standby, start time.Time, res *CloneResult) (Spec, error) {
	spec, nics, err := cloneSpec(t, req)
	if err == nil {
		_, err = h.Get(req.Name)
		if err == nil {
			err = fmt.Errorf("vm %q: %w", req.Name, ErrExists)
		} else if errors.Is(err, ErrNotFound) {
			err = nil
		}
	}
	if err != nil {
		h.pool(t.Name).putBack(s)
		return spec, err
	}
	for i := range nics {
		nics[i].OldMAC = s.spec.NICs[i].MAC // what the guest has now
	}
	// guestd takes the identity while hostd records the VM.
	c := newCloneIdentity(req.Hostname, nics)
	done := make(chan error, 1)
	go func() {
		gctx, cancel := context.WithTimeout(ctx, h.cfg.GuestTimeout)
		defer cancel()
		done <- s.guest.Clone(gctx, newRoundID(), c)
	}()
	vm, err := h.Create(spec)
	if err == nil {
		err = vm.saveCloneIdentity(c)
	}
	if err == nil {
		err = vm.locked("clone", func() error { return vm.takeStandby(s) })
		res.PID, res.Start, res.Standby = s.proc.PID, timeNow().Sub(start), true
		res.Load = res.Start
	}
	if gerr := <-done; gerr != nil && err == nil {
		err = fmt.Errorf("%w: %w", ErrGuest, gerr)
	}
	s.guest.Close()
	if err != nil {
		s.stop()
		if vm != nil {
			vm.kill()
			h.Delete(vm.name)
		}
		return spec, fmt.Errorf("clone %q of template %q (standby %s): %w", req.Name, t.Name, s.name, err)
	}
	return spec, nil
}

// takeStandby makes a standby's QEMU the VM's: its sockets, pid file and
// logs move into the VM's directory (QEMU holds the logs open and its
// sockets are found by the moved inodes); the runtime record keeps the
// directory QEMU was started in, which its command line names, so that a
// restarted hostd still adopts it. Callers hold vm.op.
func (vm *VM) takeStandby(s *standby) error {
	if err := vm.allocateSlots(nil); err != nil {
		return err
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Rename(filepath.Join(s.dir, e.Name()), filepath.Join(vm.dir, e.Name())); err != nil {
			return err
		}
	}
	os.Remove(s.dir)
	vm.install(s.proc, launch{bornIn: s.dir})
	return nil
}

package hostd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/hostd/manifest"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/hostd/snapshot"
	"github.com/symvirt/symvirt/internal/atomicfile"
)

// templateSettle is how long a template VM runs on after guestd
// answered, before it is saved: what the guest was still doing (its log
// of the connection on the way to the console, say) is done then, rather
// than in every clone while it becomes ready.
const templateSettle = time.Second

// templateVMPrefix names the VM a template is booted as while it is made.
const templateVMPrefix = "template-"

// CreateTemplate boots spec's VM with its RAM on a shared file, waits
// until guestd answers, pauses it, saves its device state without RAM
// (x-ignore-shared: the RAM file is the template's memory) and keeps both
// under name, published (its id set). The VM itself is gone afterwards.
func (h *Host) CreateTemplate(ctx context.Context, name string, spec Spec) (Template, error) {
	dir, err := h.templateDir(name)
	if err != nil {
		return Template{}, err
	}
	spec, err = templateSpec(name, spec)
	if err != nil {
		return Template{}, err
	}
	if err := h.makeTemplateDir(name, dir); err != nil {
		return Template{}, err
	}
	t, err := h.bootTemplate(ctx, dir, name, spec)
	if err != nil {
		os.RemoveAll(dir)
		os.Remove(h.templateRAMPath(name))
		return Template{}, fmt.Errorf("template %q: %w", name, err)
	}
	// Published at once: its id is what the coordinator records, and
	// what every later fetch of it is checked against.
	pub, err := h.PublishTemplate(ctx, name)
	if err != nil {
		if derr := h.DeleteTemplate(name); derr != nil {
			h.log.Warn("unpublished template not removed", "template", name, "err", derr)
		}
		return Template{}, fmt.Errorf("template %q: publish: %w", name, err)
	}
	t.ID = pub.ID
	h.log.Info("template created", "template", name, "id", t.ID, "boot", t.Boot, "state_bytes", t.State.Size)
	return t, nil
}

// templateSpec is the VM a template boots: RAM on a shared file, a guest
// channel to learn when guestd is up, and fixed MACs (clones find their
// NICs by them).
func templateSpec(name string, spec Spec) (Spec, error) {
	bad := func(field, why string) (Spec, error) {
		return spec, fmt.Errorf("template %q: field %s: %s: %w", name, field, why, ErrInvalidSpec)
	}
	switch {
	case spec.HugePages:
		return bad("hugepages", "templates keep RAM on /dev/shm")
	case spec.SharedMemory != nil && !*spec.SharedMemory:
		return bad("shared_memory", "false, but a template's RAM is its shared file")
	case spec.Guest.Type != "virtio-serial":
		return bad("guest_channel.type", "a template needs guestd on virtio-serial (vsock clones would share a CID)")
	case len(spec.Disks) > 0:
		return bad("disks", "clones would share the template's disks: not yet supported")
	}
	for _, d := range spec.Devs {
		if d.Passthrough {
			return bad("devs", "passthrough devices cannot be cloned")
		}
	}
	on := true
	spec.SharedMemory = &on
	spec.Name = templateVMPrefix + name
	spec.NICs = append([]NIC(nil), spec.NICs...)
	for i := range spec.NICs {
		if spec.NICs[i].Passthrough {
			return bad("nics", "passthrough NICs cannot be cloned")
		}
		if spec.NICs[i].MAC == "" {
			spec.NICs[i].MAC = randomMAC()
		}
	}
	return spec, spec.Validate()
}

// bootTemplate runs the template VM up to guestd ready, saves it into dir
// and removes the VM.
func (h *Host) bootTemplate(ctx context.Context, dir, name string, spec Spec) (Template, error) {
	vm, err := h.Create(spec)
	if err != nil {
		return Template{}, err
	}
	defer func() {
		vm.kill()
		if err := h.Delete(vm.name); err != nil {
			h.log.Warn("template vm not deleted", "vm", vm.name, "err", err)
		}
	}()
	start := timeNow()
	vm.sparseRAM = true
	if err := vm.Start(ctx); err != nil {
		return Template{}, err
	}
	gctx, cancel := context.WithTimeout(ctx, h.cfg.GuestTimeout+h.cfg.StopTimeout)
	host, _, err := vm.connectGuest(gctx)
	cancel()
	if err != nil {
		return Template{}, fmt.Errorf("guestd never answered: %w: %w", ErrGuest, err)
	}
	// Open until the template is saved: guestd is saved blocked in its
	// read of the port, not polling a port with no host behind it (which
	// would delay each clone's handshake by up to its poll interval).
	defer host.Close()
	t := Template{Name: name, Spec: spec, CreatedAt: timeNow().UTC(), Boot: timeNow().Sub(start)}
	select {
	case <-time.After(templateSettle):
	case <-ctx.Done():
		return Template{}, ctx.Err()
	}
	err = vm.locked("template", func() error {
		t.State, t.RAM, err = vm.saveTemplate(ctx, dir, h.templateRAMPath(name))
		return err
	})
	if err != nil {
		return Template{}, err
	}
	vm.kill() // before hashing: nothing writes the file any more
	if t.RAMSHA256, err = FileSHA256(t.RAM.Path); err != nil {
		return Template{}, err
	}
	if err := writeJSON(filepath.Join(dir, templateRecord), t); err != nil {
		return Template{}, err
	}
	return t, atomicfile.SyncDir(dir)
}

// saveTemplate pauses the VM, saves its device state without RAM into
// dir and links its RAM file to ramPath, before the VM's QEMU quits and
// its own name of the file is removed; callers hold vm.op.
func (vm *VM) saveTemplate(ctx context.Context, dir, ramPath string) (manifest.FileDigest, qemu.RAMFile, error) {
	mon, err := vm.monitor()
	if err != nil {
		return manifest.FileDigest{}, qemu.RAMFile{}, err
	}
	if err := mon.Stop(ctx); err != nil {
		return manifest.FileDigest{}, qemu.RAMFile{}, err
	}
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"x-ignore-shared": true}); err != nil {
		return manifest.FileDigest{}, qemu.RAMFile{}, err
	}
	state, err := snapshot.Save(ctx, mon, filepath.Join(dir, templateState))
	if err != nil {
		return state, qemu.RAMFile{}, fmt.Errorf("save device state: %w", err)
	}
	vm.mu.Lock()
	ram := vm.rt.RAM
	vm.mu.Unlock()
	if ram == nil {
		return state, qemu.RAMFile{}, fmt.Errorf("no RAM file recorded: %w", ErrRAMFile)
	}
	if d := ram.Replaced(); d != "" {
		return state, qemu.RAMFile{}, fmt.Errorf("%s: %w", d, ErrRAMFile)
	}
	if err := os.Link(ram.Path, ramPath); err != nil {
		return state, qemu.RAMFile{}, fmt.Errorf("keep the RAM file: %v: %w", err, ErrRAMFile)
	}
	id, err := ramIdentity(ramPath)
	return state, id, err
}

// makeTemplateDir creates template name's directory dir, refusing one that
// exists: two creations or fetches of one name must not share it.
func (h *Host) makeTemplateDir(name, dir string) error {
	if err := os.MkdirAll(h.templatesDir(), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("template %q: %w", name, ErrExists)
		}
		return err
	}
	return nil
}

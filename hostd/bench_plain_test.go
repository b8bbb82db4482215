package hostd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// plainQEMU is the bench's baseline: the same guest on the same QEMU
// binary, kernel and initrd, with the same NIC on a root port of its own,
// driven over QMP by hand as an operator without symvirt would (RAM
// private, migration events on, no hashing, no fsync, no guest round).
// With unplug it is the operator's script for a VM whose NIC cannot
// migrate: the NIC unplugged before and plugged back after.
type plainQEMU struct {
	t    *testing.T
	cmd  *exec.Cmd
	mon  *qmp.Client
	dir  string
	bin  string
	args []string
}

// plainNIC is the baseline's NIC, as on its command line and as plugged
// back by device_add.
var plainNIC = map[string]any{"netdev": "nd-pt0", "mac": "52:54:00:ee:01:01", "bus": "rp-pt0"}

// plainArgs is the baseline's QEMU command line, without -incoming; g's
// guest boots the same kernel command line as symvirt's. Without nic the
// NIC's root port and back end are there, the NIC is not (a QEMU that
// takes the state of a VM whose NIC was unplugged).
func plainArgs(h *Host, dir string, mem Size, g benchGuest, nic bool) []string {
	args := []string{"-machine", "q35", "-accel", h.cfg.Accel,
		"-m", fmt.Sprintf("%dM", mem), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-kernel", g.kernel, "-initrd", g.initrd, "-append", g.cmdline(),
		"-chardev", "file,id=serial0,append=on,path=" + filepath.Join(dir, "serial.log"), "-serial", "chardev:serial0",
		"-qmp", "unix:" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off",
		"-device", "pcie-root-port,id=rp-pt0,chassis=1,slot=1,bus=pcie.0",
		"-netdev", "user,id=nd-pt0"}
	if nic {
		args = append(args, "-device", fmt.Sprintf("vmxnet3,netdev=%s,id=pt0,mac=%s,bus=%s", plainNIC["netdev"], plainNIC["mac"], plainNIC["bus"]))
	}
	return args
}

// startPlain starts a baseline QEMU (with incoming, waiting for a
// migration stream: "defer") and connects to its monitor.
func startPlain(ctx context.Context, t *testing.T, h *Host, mem Size, g benchGuest, incoming, nic bool) *plainQEMU {
	dir, err := os.MkdirTemp("", "plain")
	if err != nil {
		t.Fatal(err)
	}
	p := &plainQEMU{t: t, dir: dir, bin: h.cfg.QEMU, args: plainArgs(h, dir, mem, g, nic)}
	args := p.args
	if incoming {
		args = append(args, "-incoming", "defer")
	}
	p.cmd = exec.Command(p.bin, args...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	sock := filepath.Join(dir, "qmp.sock")
	for p.mon == nil {
		if p.mon, err = qmp.Dial(ctx, "unix", sock); err != nil {
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := p.mon.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *plainQEMU) kill() {
	if p.mon != nil {
		p.mon.Close()
	}
	if p.cmd.Process != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	os.RemoveAll(p.dir)
}

// quit ends QEMU and waits for its process.
func (p *plainQEMU) quit(ctx context.Context) {
	if err := p.mon.Quit(ctx); err != nil {
		p.t.Fatal(err)
	}
	p.cmd.Wait()
}

// waitRunning waits for the guest's vCPUs to run (RESUME, or already).
func (p *plainQEMU) waitRunning(ctx context.Context) {
	events, cancel := p.mon.Subscribe("RESUME")
	defer cancel()
	if st, err := p.mon.Status(ctx); err == nil && st.Running {
		return
	}
	select {
	case <-events:
	case <-ctx.Done():
		p.t.Fatal(ctx.Err())
	}
}

// plainBaseline times what hostd's checkpoint, restore and migration do,
// on plain QEMU: stop and save to a file then quit; start a QEMU that
// loads the file and runs; start a destination QEMU and migrate to it
// until it runs. The saved file is written out to disk after its time is
// taken (syncPlain), as hostd's checkpoint is before it returns: the
// baseline does not pay for it, and the kernel's writeback of it does not
// land in a later measurement.
//
// The times are by operation ("checkpoint", "restore", "migrate"), and
// "checkpoint_synced": the checkpoint and then its file's fsync, the
// durability hostd's checkpoint has when it returns.
func plainBaseline(ctx context.Context, t *testing.T, h *Host, mem Size, g benchGuest) map[string]time.Duration {
	return plainOps{ctx: ctx, t: t, h: h, mem: mem, g: g}.run()
}

// plainBaselineUnplug is plainBaseline as a script for a VM with a
// passthrough NIC has it: each operation unplugs the NIC first
// (device_del, then the save or migration once QEMU has finalized it) and
// the restored or migrated VM has it plugged back (device_add) before its
// time is taken, as hostd's restore and migration do.
func plainBaselineUnplug(ctx context.Context, t *testing.T, h *Host, mem Size, g benchGuest) map[string]time.Duration {
	return plainOps{ctx: ctx, t: t, h: h, mem: mem, g: g, unplug: true}.run()
}

// plainOps is one run of the baseline's three operations.
type plainOps struct {
	ctx    context.Context
	t      *testing.T
	h      *Host
	mem    Size
	g      benchGuest
	unplug bool
}

func (o plainOps) run() map[string]time.Duration {
	src := startPlain(o.ctx, o.t, o.h, o.mem, o.g, false, true)
	waitSerial(o.t, filepath.Join(src.dir, "serial.log"), regexp.MustCompile(`symvirt-counter 3`))
	file := filepath.Join(o.t.TempDir(), "plain.state")
	start := time.Now()
	o.unplugNIC(src)
	if err := src.mon.Stop(o.ctx); err != nil {
		o.t.Fatal(err)
	}
	o.migrate(src, "exec:cat > "+file)
	src.quit(o.ctx)
	ckpt := time.Since(start)
	syncPlain(o.t, file)
	synced := time.Since(start)

	start = time.Now()
	run := startPlain(o.ctx, o.t, o.h, o.mem, o.g, true, !o.unplug)
	if err := run.mon.MigrateIncoming(o.ctx, "exec:cat "+file); err != nil {
		o.t.Fatal(err)
	}
	if _, err := run.mon.WaitMigration(o.ctx, 10*time.Millisecond, nil); err != nil {
		o.t.Fatal(err)
	}
	if err := run.mon.Cont(o.ctx); err != nil {
		o.t.Fatal(err)
	}
	run.waitRunning(o.ctx)
	o.plugNIC(run)
	restore := time.Since(start)
	// As symvirt's migration in benchOps: of a guest that has run a
	// while since its restore, not one still catching up.
	time.Sleep(2 * time.Second)

	start = time.Now()
	dst := startPlain(o.ctx, o.t, o.h, o.mem, o.g, true, !o.unplug)
	sock := "unix:" + filepath.Join(dst.dir, "mig.sock")
	if err := dst.mon.MigrateIncoming(o.ctx, sock); err != nil {
		o.t.Fatal(err)
	}
	o.unplugNIC(run)
	o.migrate(run, sock)
	dst.waitRunning(o.ctx)
	o.plugNIC(dst)
	migrate := time.Since(start)
	run.quit(o.ctx)
	dst.kill()
	src.kill()
	return map[string]time.Duration{"checkpoint": ckpt, "checkpoint_synced": synced, "restore": restore, "migrate": migrate}
}

// migrate sends p's VM to uri, uncapped, and waits for the end.
func (o plainOps) migrate(p *plainQEMU, uri string) {
	if err := p.mon.MigrateSetParameters(o.ctx, map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		o.t.Fatal(err)
	}
	if err := p.mon.Migrate(o.ctx, uri); err != nil { // after any unplugged NIC's DEVICE_DELETED
		o.t.Fatal(err)
	}
	if _, err := p.mon.WaitMigration(o.ctx, 10*time.Millisecond, nil); err != nil {
		o.t.Fatal(err)
	}
}

// unplugNIC unplugs p's NIC (with unplug): the guest ejects it.
func (o plainOps) unplugNIC(p *plainQEMU) {
	if !o.unplug {
		return
	}
	if err := p.mon.DeviceDel(o.ctx, "pt0"); err != nil {
		o.t.Fatal(err)
	}
}

// plugNIC plugs the NIC back into p's VM (with unplug).
func (o plainOps) plugNIC(p *plainQEMU) {
	if !o.unplug {
		return
	}
	if err := p.mon.DeviceAdd(o.ctx, "vmxnet3", "pt0", plainNIC); err != nil {
		o.t.Fatal(err)
	}
}

// syncPlain writes the plain checkpoint's file out to disk.
func syncPlain(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

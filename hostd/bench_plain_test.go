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
type plainQEMU struct {
	t    *testing.T
	cmd  *exec.Cmd
	mon  *qmp.Client
	dir  string
	bin  string
	args []string
}

// plainArgs is the baseline's QEMU command line, without -incoming; g's
// guest boots the same kernel command line as symvirt's.
func plainArgs(h *Host, dir string, mem Size, g benchGuest) []string {
	return []string{"-machine", "q35", "-accel", h.cfg.Accel,
		"-m", fmt.Sprintf("%dM", mem), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-kernel", g.kernel, "-initrd", g.initrd, "-append", g.cmdline(),
		"-chardev", "file,id=serial0,append=on,path=" + filepath.Join(dir, "serial.log"), "-serial", "chardev:serial0",
		"-qmp", "unix:" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off",
		"-device", "pcie-root-port,id=rp-pt0,chassis=1,slot=1,bus=pcie.0",
		"-netdev", "user,id=nd-pt0", "-device", "vmxnet3,netdev=nd-pt0,id=pt0,mac=52:54:00:ee:01:01,bus=rp-pt0"}
}

// startPlain starts a baseline QEMU (with incoming, waiting for a
// migration stream: "defer") and connects to its monitor.
func startPlain(ctx context.Context, t *testing.T, h *Host, mem Size, g benchGuest, incoming bool) *plainQEMU {
	dir, err := os.MkdirTemp("", "plain")
	if err != nil {
		t.Fatal(err)
	}
	p := &plainQEMU{t: t, dir: dir, bin: h.cfg.QEMU, args: plainArgs(h, dir, mem, g)}
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
	src := startPlain(ctx, t, h, mem, g, false)
	waitSerial(t, filepath.Join(src.dir, "serial.log"), regexp.MustCompile(`symvirt-counter 3`))
	file := filepath.Join(t.TempDir(), "plain.state")
	start := time.Now()
	if err := src.mon.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		t.Fatal(err)
	}
	if err := src.mon.Migrate(ctx, "exec:cat > "+file); err != nil {
		t.Fatal(err)
	}
	if _, err := src.mon.WaitMigration(ctx, 10*time.Millisecond, nil); err != nil {
		t.Fatal(err)
	}
	src.quit(ctx)
	ckpt := time.Since(start)
	syncPlain(t, file)
	synced := time.Since(start)

	start = time.Now()
	run := startPlain(ctx, t, h, mem, g, true)
	if err := run.mon.MigrateIncoming(ctx, "exec:cat "+file); err != nil {
		t.Fatal(err)
	}
	if _, err := run.mon.WaitMigration(ctx, 10*time.Millisecond, nil); err != nil {
		t.Fatal(err)
	}
	if err := run.mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	run.waitRunning(ctx)
	restore := time.Since(start)
	// As symvirt's migration in benchOps: of a guest that has run a
	// while since its restore, not one still catching up.
	time.Sleep(2 * time.Second)

	start = time.Now()
	dst := startPlain(ctx, t, h, mem, g, true)
	sock := "unix:" + filepath.Join(dst.dir, "mig.sock")
	if err := dst.mon.MigrateIncoming(ctx, sock); err != nil {
		t.Fatal(err)
	}
	if err := run.mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(64) << 30}); err != nil {
		t.Fatal(err)
	}
	if err := run.mon.Migrate(ctx, sock); err != nil {
		t.Fatal(err)
	}
	if _, err := run.mon.WaitMigration(ctx, 10*time.Millisecond, nil); err != nil {
		t.Fatal(err)
	}
	dst.waitRunning(ctx)
	migrate := time.Since(start)
	run.quit(ctx)
	dst.kill()
	src.kill()
	return map[string]time.Duration{"checkpoint": ckpt, "checkpoint_synced": synced, "restore": restore, "migrate": migrate}
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

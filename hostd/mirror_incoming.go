package hostd

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/symvirt/symvirt/hostd/blockmirror"
	"github.com/symvirt/symvirt/hostd/migstream"
	"github.com/symvirt/symvirt/internal/names"
	"github.com/symvirt/symvirt/qmp"
)

// The destination of a storage migration creates each disk as a new
// image in the VM's own directory (as a restore does): it is hostd's, so
// no policy path is involved, and it goes with the VM: the rollback's
// CancelMigrate or Kill forgets the VM, which removes the directory and
// the copies with it. QEMU serves the images over NBD on a listening
// socket hostd made in that directory (0700) and passed to it; the
// network side is blockmirror's port.

const (
	nbdSocket   = "nbd.sock"
	nbdListenFD = "symvirt-nbd-listen"
)

// copyStorageSpec is spec with its disks moved to new images in the
// VM's directory, after checking disks names each of them once.
func (h *Host) copyStorageSpec(spec Spec, disks []CopyDisk) (Spec, error) {
	dir, err := names.Join(h.vmsDir(), spec.Name)
	if err != nil {
		return spec, fmt.Errorf("field name: %w: %v", ErrInvalidSpec, err)
	}
	if len(disks) != len(spec.Disks) {
		return spec, fmt.Errorf("storage migration: %d disks to copy for %d in the spec: %w", len(disks), len(spec.Disks), ErrInvalidSpec)
	}
	spec.Disks = append([]Disk(nil), spec.Disks...)
	for i, d := range spec.Disks {
		c := disks[i]
		if c.ID != d.ID || c.Format != d.Format || c.Size <= 0 {
			return spec, fmt.Errorf("storage migration: disk %d is %+v, the spec's %s (%s): %w", i, c, d.ID, d.Format, ErrInvalidSpec)
		}
		spec.Disks[i].Path = filepath.Join(dir, "disk-"+d.ID+"."+d.Format)
	}
	return spec, nil
}

// checkCopyStorage runs the host's policy on what a storage migration's
// spec names besides its disks (they are hostd's own new files).
func (h *Host) checkCopyStorage(spec Spec) error {
	spec.Disks = nil
	if err := h.cfg.Policy.Check(spec, h.cfg.Pools); err != nil {
		return err
	}
	return nil
}

// createCopyImages creates the empty images QEMU will open.
func (vm *VM) createCopyImages(ctx context.Context, disks []CopyDisk) error {
	for i, d := range vm.Spec().Disks {
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", d.Format, d.Path,
			strconv.FormatInt(disks[i].Size, 10)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("vm %q: storage migration: create disk %s: %v: %s", vm.name, d.ID, err, out)
		}
	}
	return nil
}

// exportDisks serves the VM's disks to the source: QEMU's NBD server on
// a socket only hostd reaches, every disk exported writable, and
// blockmirror's port admitting the source's connections (TLS with its
// hostd certificate when migration TLS is on, and the returned token).
func (vm *VM) exportDisks(ctx context.Context, mon *qmp.Client, from string, wait time.Duration) (uri, token string, err error) {
	h := vm.h
	sock := filepath.Join(vm.dir, nbdSocket)
	if err := vm.passNBDListener(ctx, mon, sock); err != nil {
		return "", "", err
	}
	// Block activation waits for cont, which comes after nbd-server-stop.
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"late-block-activate": true}); err != nil {
		return "", "", err
	}
	if err := mon.NBDServerStartFD(ctx, nbdListenFD); err != nil {
		return "", "", fmt.Errorf("vm %q: storage migration: %w", vm.name, err)
	}
	disks := vm.Spec().Disks
	for _, d := range disks {
		if err := mon.BlockExportAddNBD(ctx, "symvirt-export-"+d.ID, d.ID, d.ID, true); err != nil {
			return "", "", fmt.Errorf("vm %q: storage migration: export %s: %w", vm.name, d.ID, err)
		}
	}
	if token, err = blockmirror.NewToken(); err != nil {
		return "", "", err
	}
	var cfg *tls.Config
	if h.cfg.migrationTLS() {
		if cfg, err = h.migrationTLSConfig(true); err != nil {
			return "", "", err
		}
	}
	l, port, err := migstream.Listen(h.cfg.MigrationAddress, h.cfg.migrationPorts())
	if err != nil {
		return "", "", err
	}
	srv := blockmirror.Serve(l, blockmirror.ServeOptions{TLS: cfg, From: from, Token: token, Conns: len(disks),
		Dial: func() (net.Conn, error) { return net.Dial("unix", sock) }, Wait: wait, Log: vm.log})
	if exited := vm.exited(); exited != nil {
		go func() { <-exited; srv.Close() }()
	}
	return "tcp:" + net.JoinHostPort(h.cfg.MigrationAddress, strconv.Itoa(port)), token, nil
}

// passNBDListener makes a listening socket at path and hands it to QEMU.
func (vm *VM) passNBDListener(ctx context.Context, mon *qmp.Client, path string) error {
	os.Remove(path)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("vm %q: storage migration: %w", vm.name, err)
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		return fmt.Errorf("vm %q: storage migration: %w", vm.name, err)
	}
	defer f.Close()
	if err := mon.GetFD(ctx, nbdListenFD, f); err != nil {
		return fmt.Errorf("vm %q: storage migration: getfd: %w", vm.name, err)
	}
	return nil
}

// stopExports ends a storage migration's NBD server before the VM runs
// here: nothing may write its disks but the guest from then on.
func (vm *VM) stopExports(ctx context.Context, mon *qmp.Client) error {
	exps, err := mon.QueryBlockExports(ctx)
	if err != nil || len(exps) == 0 {
		return err
	}
	if err := mon.NBDServerStop(ctx); err != nil {
		return fmt.Errorf("vm %q: stop the storage migration's exports: %w", vm.name, err)
	}
	os.Remove(filepath.Join(vm.dir, nbdSocket))
	return nil
}

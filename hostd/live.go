package hostd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/symvirt/symvirt/qmp"
)

// A live checkpoint uses QEMU's background-snapshot: the VM is stopped for
// a moment (the snapshot point: device state saved, guest RAM
// write-protected through userfaultfd), then runs on while its memory, as
// it was at that instant, streams to the file. QEMU 7.2 resumes the vCPUs
// by itself at the snapshot point.

// ErrLiveUnsupported: this QEMU or kernel cannot take a background
// snapshot; the caller falls back to stop-and-save and says why.
var ErrLiveUnsupported = errors.New("live checkpoint unsupported")

// liveSave is a background snapshot whose stream is still being written.
type liveSave struct {
	dir  string
	done chan struct{}
	m    Manifest
	err  error
	// downtime is QEMU's own figure for the snapshot point's pause.
	downtime time.Duration
}

// startLiveSave starts a background snapshot into dir and returns once
// the snapshot point is taken (QEMU runs the VM again). A running VM is
// paused by QEMU only for the snapshot point; a stopped one (a job's
// consistent cut) is run again by QEMU at its snapshot point. The
// stream finishes in the background: wait on ls.done. Disks are copied
// before, while the VM is still stopped, so they match the cut.
func (vm *VM) startLiveSave(ctx context.Context, mon *qmp.Client, dir string, round *Round, bandwidth int64) (*liveSave, error) {
	if err := mon.MigrateSetCapabilities(ctx, map[string]bool{"background-snapshot": true}); err != nil {
		return nil, fmt.Errorf("vm %q: %w: %v", vm.name, ErrLiveUnsupported, err)
	}
	off := func() {
		octx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		mon.MigrateSetCapabilities(octx, map[string]bool{"background-snapshot": false})
	}
	ls := &liveSave{dir: dir, done: make(chan struct{})}
	m := Manifest{Version: 1, VM: vm.name, Spec: vm.Spec(), CreatedAt: time.Now().UTC(),
		QEMU: mon.Version().String(), Round: round}
	m.Spec.Disks = slices.Clone(m.Spec.Disks)
	for i, d := range m.Spec.Disks {
		name := "disk-" + d.ID + "." + d.Format
		fd, err := copyFileDigest(d.Path, filepath.Join(dir, name))
		if err != nil {
			off()
			return nil, fmt.Errorf("vm %q: copy disk %q: %w", vm.name, d.ID, err)
		}
		fd.Role, fd.ID = "disk", d.ID
		m.Files = append(m.Files, fd)
		m.Spec.Disks[i].Path = name
	}
	path := filepath.Join(dir, stateName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		off()
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		f.Close()
		off()
		return nil, err
	}
	err = mon.GetFD(ctx, "symvirt-live", w)
	w.Close()
	if err == nil {
		// A cap keeps a background checkpoint from starving the running
		// job of disk bandwidth.
		if bandwidth <= 0 {
			bandwidth = 64 << 30
		}
		err = mon.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": bandwidth})
	}
	resumed, unsubscribe := mon.Subscribe("RESUME")
	defer unsubscribe()
	if err == nil {
		err = mon.Migrate(ctx, "fd:symvirt-live")
	}
	if err != nil {
		r.Close()
		f.Close()
		off()
		return nil, err
	}
	// The stream outlives the request that started it.
	sctx, stop := context.WithCancelCause(context.Background())
	hs := sha256.New()
	copied := make(chan error, 1)
	var n int64
	go func() {
		var err error
		n, err = io.Copy(io.MultiWriter(f, hs), r)
		if err != nil {
			// Keep draining: failing QEMU's stream while the guest runs
			// under write protection can leave its vCPUs stuck on
			// faults. Let the snapshot finish into nothing, then fail it.
			err = fmt.Errorf("write %s: %w", path, err)
			io.Copy(io.Discard, r)
		}
		copied <- err
	}()
	go func() {
		defer close(ls.done)
		defer off()
		defer f.Close()
		defer stop(nil)
		info, err := mon.WaitMigration(sctx, 50*time.Millisecond, nil)
		ls.downtime = time.Duration(info.Downtime) * time.Millisecond
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			mon.MigrateCancel(cctx)
			cancel()
			r.Close()
			if cerr := <-copied; cerr != nil {
				err = cerr
			}
		} else {
			err = <-copied
		}
		r.Close()
		if err == nil {
			err = f.Sync()
		}
		if err == nil {
			m.Files = append(m.Files, FileDigest{Name: stateName, Role: "state", Size: n, SHA256: hex.EncodeToString(hs.Sum(nil))})
			err = writeJSON(filepath.Join(dir, manifestName), m)
		}
		if err != nil {
			os.RemoveAll(dir)
			ls.err = fmt.Errorf("vm %q: live checkpoint stream: %w", vm.name, err)
			vm.log.Error("live checkpoint failed; the vm runs on untouched", "err", ls.err)
			return
		}
		ls.m = m
		vm.log.Info("live checkpoint stream complete", "dir", dir, "bytes", n)
	}()
	// The snapshot point: QEMU has stopped the vCPUs (if they ran), saved
	// the devices and armed the write protection when it runs them again.
	for {
		select {
		case <-resumed:
			return ls, nil
		case <-ls.done:
			if ls.err == nil {
				return ls, nil // a tiny VM: already complete
			}
			return nil, ls.err
		case <-ctx.Done():
			stop(ctx.Err())
			<-ls.done
			return nil, ctx.Err()
		}
	}
}

// wait waits for the stream and returns the manifest.
func (ls *liveSave) wait(ctx context.Context) (Manifest, error) {
	select {
	case <-ls.done:
		return ls.m, ls.err
	case <-ctx.Done():
		return Manifest{}, ctx.Err()
	}
}

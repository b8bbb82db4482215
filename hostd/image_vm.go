package hostd

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/symvirt/symvirt/hostd/disk"
	"github.com/symvirt/symvirt/internal/names"
)

// imageDiskID is the disk a VM booted from an image gets.
const imageDiskID = "image"

// ImageVMRequest starts a VM whose first disk is a qcow2 overlay on an
// image's cache here; the spec brings everything else (no disks).
type ImageVMRequest struct {
	Spec Spec `json:"spec"`
}

// ImageVMResult reports one VM started from an image: Overlay is the
// qcow2 overlay's creation, Start QEMU up and running, Ready from the
// request to QEMU running (to guestd's handshake when the spec has a
// guest channel).
type ImageVMResult struct {
	VM      string        `json:"vm"`
	Image   string        `json:"image"`
	PID     int           `json:"pid"`
	Overlay time.Duration `json:"overlay_ns"`
	Start   time.Duration `json:"start_ns"`
	Ready   time.Duration `json:"ready_ns"`
}

// BootImageVM creates a VM on a new qcow2 overlay of image and starts
// it. The overlay's backing file is the image's NBD export on this host,
// which only hostd creates: the spec passes the policy without it. A VM
// that fails to start is removed.
func (h *Host) BootImageVM(ctx context.Context, image string, req ImageVMRequest) (res ImageVMResult, err error) {
	start := timeNow()
	defer func() { h.metrics.observe("image_vm", resultLabel(err), start) }()
	spec := req.Spec
	res = ImageVMResult{VM: spec.Name, Image: image}
	c, err := h.imageCache(image)
	if err != nil {
		return res, err
	}
	if len(spec.Disks) > 0 {
		return res, fmt.Errorf("vm %q: field disks: a VM booted from an image has the image's overlay as its disk: %w", spec.Name, ErrInvalidSpec)
	}
	if err := spec.Validate(); err != nil {
		return res, err
	}
	if _, err := names.Join(h.vmsDir(), spec.Name); err != nil {
		return res, fmt.Errorf("field name: %w: %v", ErrInvalidSpec, err)
	}
	if err := h.cfg.Policy.Check(spec, h.cfg.Pools); err != nil {
		return res, err
	}
	overlay := filepath.Join(h.layout().VM(spec.Name), "image.qcow2")
	spec.Disks = []Disk{{ID: imageDiskID, Path: overlay, Format: "qcow2"}}
	vm, err := h.create(spec)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			vm.kill()
			h.Delete(vm.name)
		}
	}()
	sock := filepath.Join(h.imagesDir(), image, "nbd.sock")
	if err = disk.CreateOverlay(ctx, overlay, imageBacking(image, sock), "raw", c.Size()); err != nil {
		return res, fmt.Errorf("vm %q: overlay on image %q: %w", spec.Name, image, err)
	}
	res.Overlay = timeNow().Sub(start)
	if err = vm.Start(ctx); err != nil {
		return res, err
	}
	res.Start = timeNow().Sub(start)
	if t := vm.Spec().Guest.Type; t != "" && t != "none" {
		gctx, cancel := context.WithTimeout(ctx, h.cfg.GuestTimeout)
		g, _, gerr := vm.connectGuest(gctx)
		cancel()
		if err = gerr; err != nil {
			return res, fmt.Errorf("vm %q: guestd: %w", spec.Name, err)
		}
		g.Close()
	}
	res.Ready = timeNow().Sub(start)
	res.PID = vm.Info(ctx).PID
	return res, nil
}

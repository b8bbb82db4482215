package hostd

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestCloneStoppedAsItRebootsStaysStopped mounts the race of a `vm stop`
// against a clone's reboot: its guest resets (QMP system_reset, the RESET
// a guest reboot makes), the placeholder kernel powers the machine off and
// QEMU exits, all for real; the hook then stops the VM in the window after
// hostd saw that exit and decided to boot the VM again, before the reboot
// took the VM's lock. The stop wins: the clone stays stopped.
func TestCloneStoppedAsItRebootsStaysStopped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("hostd.New needs root")
	}
	h, _ := benchHost(t, "6")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kernel, _ := testguest.Paths(t)
	spec := Spec{Name: "small", Memory: 256, VCPUs: 1, Kernel: kernel, Initrd: testguest.Initrd(t, nil),
		Append: "console=ttyS0 quiet panic=-1 symvirt.agent=1 symvirt.name=small",
		NICs:   []NIC{{ID: "net0", Model: "virtio-net-pci"}}, Guest: Channel{Type: "virtio-serial"}}
	if _, err := h.CreateTemplate(ctx, "small", spec); err != nil {
		t.Fatal(err)
	}
	res, err := h.Clone(ctx, CloneRequest{Template: "small", Name: "s0"})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := h.Get("s0")
	if err != nil {
		t.Fatal(err)
	}
	stopped, done := make(chan error, 1), make(chan struct{})
	vm.mu.Lock()
	vm.reboot.hook = func(stage string) {
		switch stage {
		case "decided":
			if qemu.Alive(res.PID) {
				stopped <- fmt.Errorf("qemu pid %d still runs as hostd decides to reboot", res.PID)
				return
			}
			stopped <- vm.Stop(ctx, 0)
		case "done":
			close(done)
		}
	}
	vm.mu.Unlock()
	mon, err := vm.monitor()
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Execute(ctx, "system_reset", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the clone's reset never led to a reboot decision")
	}
	if err := <-stopped; err != nil {
		t.Fatalf("vm stop in the window: %v", err)
	}
	info := vm.Info(ctx)
	if vm.alive() || info.PID != 0 || info.State == "running" {
		t.Fatalf("clone stopped while its guest rebooted was booted again: %+v", info)
	}
}

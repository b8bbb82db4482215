package qmp

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testguest"
)

// A guest ejects a NIC: DeviceDel returns once the NIC is out of QEMU's
// device tree, which QEMU's DEVICE_DELETED follows only after its RCU
// callbacks (batched for up to 50 ms), and a DeviceAdd of the same id
// right after waits for that event.
func TestQEMUDeviceDelReturnsAtTheGuestsEject(t *testing.T) {
	kernel, initrd := testguest.Paths(t)
	serial := filepath.Join(t.TempDir(), "serial.log")
	vm := startQEMU(t, "-m", "256", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet", "-serial", "file:"+serial,
		"-netdev", "user,id=n0",
		"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
		"-device", "vmxnet3,id=nic0,netdev=n0,bus=rp1")
	ctx := testCtx(t, 3*time.Minute)
	c := vm.dial(ctx)
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	waitSerial(t, ctx, serial, "symvirt-guest-ready")
	deleted, cancel := c.Subscribe("DEVICE_DELETED")
	defer cancel()
	early := 0
	for round := range 3 {
		time.Sleep(2 * time.Second) // the guest has taken the NIC into service
		dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.DeviceDel(dctx, "nic0")
		dcancel()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		select {
		case <-deleted:
		default:
			early++
		}
		buses, err := c.QueryPCI(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := FindPCIDevice(buses, "nic0"); ok {
			t.Fatalf("round %d: nic0 still in query-pci after DeviceDel", round)
		}
		if err := c.DeviceAdd(ctx, "vmxnet3", "nic0", map[string]any{"netdev": "n0", "bus": "rp1"}); err != nil {
			t.Fatalf("round %d: re-add: %v", round, err)
		}
		select {
		case <-deleted: // consumed already, or it came before the add
		default:
		}
		c.mu.Lock()
		pending := c.finalizing["nic0"]
		c.mu.Unlock()
		if pending != nil {
			t.Fatalf("round %d: device_add sent while the earlier nic0 was not finalized", round)
		}
	}
	if early == 0 {
		t.Error("DeviceDel returned after DEVICE_DELETED in every round: it waited for QEMU's finalization")
	}
	t.Logf("%d of 3 DeviceDel calls returned before DEVICE_DELETED", early)
	migrateAfterUnplug(t, ctx, c)
}

// migrateAfterUnplug unplugs nic0 and migrates at once: the migration
// starts (its first MIGRATION event) only after nic0's DEVICE_DELETED.
func migrateAfterUnplug(t *testing.T, ctx context.Context, c *Client) {
	time.Sleep(2 * time.Second)
	if err := c.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		t.Fatal(err)
	}
	order, cancel := c.Subscribe("DEVICE_DELETED", "MIGRATION")
	defer cancel()
	if err := c.DeviceDel(ctx, "nic0"); err != nil {
		t.Fatal(err)
	}
	if err := c.Migrate(ctx, "exec:cat > /dev/null"); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-order:
		if ev.Event != "DEVICE_DELETED" {
			t.Errorf("%s %v came before nic0's DEVICE_DELETED: the migration started while QEMU finalized it", ev.Event, ev.Data)
		}
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
}

// waitSerial waits until the guest's console log holds marker.
func waitSerial(t *testing.T, ctx context.Context, path, marker string) {
	t.Helper()
	for {
		if data, _ := os.ReadFile(path); strings.Contains(string(data), marker) {
			return
		}
		select {
		case <-ctx.Done():
			data, _ := os.ReadFile(path)
			t.Fatalf("no %q on the console: %v\n%s", marker, ctx.Err(), data)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

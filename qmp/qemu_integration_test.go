package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
)

// Integration tests against a real qemu-system-x86_64 (TCG, no guest).
// They skip when QEMU is missing unless SYMVIRT_REQUIRE_QEMU=1.

func TestQEMUStatusContStopQuit(t *testing.T) {
	vm := startQEMU(t)
	ctx := testCtx(t, 60*time.Second)
	c := vm.dial(ctx)
	if v := c.Version(); v.QEMU.Major < 7 {
		t.Errorf("Version = %s", v)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Status != "prelaunch" || st.Running {
		t.Fatalf("Status = %+v, %v; want prelaunch (-S)", st, err)
	}

	events, cancel := c.Subscribe("RESUME", "STOP")
	defer cancel()
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Status(ctx); err != nil || st.Status != "running" || !st.Running {
		t.Fatalf("after cont: %+v, %v", st, err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Status(ctx); err != nil || st.Status != "paused" || st.Running {
		t.Fatalf("after stop: %+v, %v", st, err)
	}
	for _, want := range []string{"RESUME", "STOP"} {
		select {
		case ev := <-events:
			if ev.Event != want {
				t.Errorf("event %q, want %q", ev.Event, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %s event", want)
		}
	}

	// go-qemu's raw API over our client.
	rs, err := raw.NewMonitor(c).QueryStatus()
	if err != nil || rs.Status != raw.RunStatePaused {
		t.Errorf("raw QueryStatus = %+v, %v", rs, err)
	}

	// Unknown command class.
	err = c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.Is(err, ErrCommandNotFound) || !errors.As(err, &qe) || qe.Cmd != "no-such-command" {
		t.Errorf("unknown command err = %v", err)
	}
	// Bad arguments are GenericError.
	if err := c.Execute(ctx, "query-status", map[string]any{"bogus": 1}, nil); !errors.Is(err, ErrGenericError) {
		t.Errorf("bad argument err = %v", err)
	}
	// DeviceNotFound class for a missing device.
	if err := c.DeviceDel(ctx, "ghost"); !errors.Is(err, ErrDeviceNotFound) {
		t.Errorf("device_del ghost err = %v", err)
	}

	// query-qmp-schema is far bigger than bufio.Scanner's 64 KiB token limit.
	var schema []json.RawMessage
	if err := c.Execute(ctx, "query-qmp-schema", nil, &schema); err != nil {
		t.Fatal(err)
	}
	size := 0
	for _, s := range schema {
		size += len(s)
	}
	if size < 64<<10 {
		t.Errorf("query-qmp-schema only %d bytes; large-reply path not exercised", size)
	}
	t.Logf("query-qmp-schema: %d entries, %d bytes", len(schema), size)

	// Quit: returns nil once QEMU closed the monitor; Done is closed.
	if err := c.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Quit")
	}
	t.Logf("after quit, Err = %v", c.Err())
	if !errors.Is(c.Err(), ErrDisconnected) {
		t.Errorf("Err = %v", c.Err())
	}
	if _, err := c.Status(ctx); !errors.Is(err, ErrDisconnected) {
		t.Errorf("call after quit: %v", err)
	}
	if err := vm.waitExit(10 * time.Second); err != nil {
		t.Error(err)
	}
}

// Default q35 in QEMU 7.2 uses ACPI PCI hotplug for root ports: device_del
// only asks the guest, so with no OS running DEVICE_DELETED never comes.
func TestQEMUHotplugACPINeedsGuest(t *testing.T) {
	vm := startQEMU(t,
		"-netdev", "user,id=n0",
		"-netdev", "user,id=n1",
		"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
		"-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2",
	)
	ctx := testCtx(t, 60*time.Second)
	c := vm.dial(ctx)

	// The root complex itself does not take hot-plugged devices.
	err := c.DeviceAdd(ctx, "vmxnet3", "nic-root", map[string]any{"netdev": "n0"})
	if !errors.Is(err, ErrGenericError) || !strings.Contains(err.Error(), "does not support hotplugging") {
		t.Errorf("device_add on pcie.0: %v", err)
	}

	if err := c.DeviceAdd(ctx, "vmxnet3", "nic0", map[string]any{"netdev": "n0", "bus": "rp1"}); err != nil {
		t.Fatal(err)
	}
	// Before the firmware ran, bridges have secondary bus 0 and query-pci
	// lists nothing behind them.
	buses, err := c.QueryPCI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := FindPCIDevice(buses, "nic0"); ok {
		t.Error("nic0 visible in query-pci before firmware enumeration (QEMU behaviour changed?)")
	}
	if rp, ok := FindPCIDevice(buses, "rp1"); !ok || rp.PCIBridge == nil || rp.PCIBridge.Bus.Secondary != 0 {
		t.Errorf("rp1 before firmware = %+v", rp)
	}

	// In prelaunch, a repeated device_del is refused while the first
	// request is pending.
	if err := c.DeviceAdd(ctx, "vmxnet3", "nic-early", map[string]any{"netdev": "n1", "bus": "rp2"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "device_del", map[string]any{"id": "nic-early"}, nil); err != nil {
		t.Fatal(err)
	}
	err = c.Execute(ctx, "device_del", map[string]any{"id": "nic-early"}, nil)
	if !errors.Is(err, ErrGenericError) || !strings.Contains(err.Error(), "in the process of unplug") {
		t.Errorf("repeated device_del in prelaunch = %v", err)
	}

	buses = runFirmware(t, ctx, c, "rp1")
	d, ok := FindPCIDevice(buses, "nic0")
	if !ok {
		t.Fatalf("nic0 not found in query-pci: %+v", buses)
	}
	if d.Bus == 0 || d.ID.Vendor != 0x15ad || d.ID.Device != 0x07b0 || d.ClassInfo.Class != 0x0200 {
		t.Errorf("nic0 = %+v; want VMware vmxnet3 (15ad:07b0, class 0200) behind the root port", d)
	}
	if rp, ok := FindPCIDevice(buses, "rp1"); !ok || rp.PCIBridge == nil || rp.PCIBridge.Bus.Secondary != d.Bus {
		t.Errorf("rp1 = %+v", rp)
	}
	if _, ok := FindPCIDevice(buses, "nic-early"); !ok {
		t.Error("nic-early gone although its unplug was never acknowledged")
	}

	dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	err = c.DeviceDel(dctx, "nic0")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"nic0"`) {
		t.Fatalf("DeviceDel without guest = %v; want bounded timeout naming nic0", err)
	}
	// Once the firmware has run, QEMU accepts the request again (it re-sends
	// the ACPI notification) and still nothing happens without a guest OS.
	if err := c.Execute(ctx, "device_del", map[string]any{"id": "nic0"}, nil); err != nil {
		t.Errorf("repeated device_del after firmware = %v", err)
	}
	buses, err = c.QueryPCI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := FindPCIDevice(buses, "nic0"); !ok {
		t.Error("nic0 vanished although unplug was never acknowledged")
	}
}

// With native PCIe hotplug (ACPI hotplug off) QEMU 7.2 unplugs a device from
// a slot the guest never powered on immediately, emitting DEVICE_DELETED.
func TestQEMUHotplugNativePCIeImmediate(t *testing.T) {
	vm := startQEMU(t,
		"-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
		"-netdev", "user,id=n0",
		"-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1",
	)
	ctx := testCtx(t, 60*time.Second)
	c := vm.dial(ctx)
	if err := c.DeviceAdd(ctx, "vmxnet3", "nic1", map[string]any{"netdev": "n0", "bus": "rp1"}); err != nil {
		t.Fatal(err)
	}
	buses := runFirmware(t, ctx, c, "rp1")
	if _, ok := FindPCIDevice(buses, "nic1"); !ok {
		t.Fatal("nic1 not in query-pci")
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.DeviceDel(dctx, "nic1"); err != nil {
		t.Fatalf("DeviceDel: %v", err)
	}
	buses, err := c.QueryPCI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := FindPCIDevice(buses, "nic1"); ok {
		t.Error("nic1 still in query-pci after DEVICE_DELETED")
	}
	// The id is free again.
	if err := c.DeviceAdd(ctx, "vmxnet3", "nic1", map[string]any{"netdev": "n0", "bus": "rp1"}); err != nil {
		t.Errorf("re-add: %v", err)
	}
}

// Save a VM's state through a pipe passed with getfd, then restore it into a
// second QEMU started with -incoming defer.
func TestQEMUMigrateViaFDPipe(t *testing.T) {
	src := startQEMU(t, "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1")
	ctx := testCtx(t, 120*time.Second)
	c := src.dial(ctx)
	// Let the firmware run so the VM has state and leaves "prelaunch": the
	// destination takes over the source's run state ("paused" here).
	runFirmware(t, ctx, c, "rp1")

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if err := c.GetFD(ctx, "mig", pw); err != nil {
		pw.Close()
		t.Fatal(err)
	}
	pw.Close() // QEMU holds its own dup; EOF comes when QEMU closes it

	type readResult struct {
		data []byte
		err  error
	}
	readc := make(chan readResult, 1)
	go func() {
		b, err := io.ReadAll(pr)
		readc <- readResult{b, err}
	}()

	if err := c.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(1) << 30}); err != nil {
		t.Fatal(err)
	}
	if err := c.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		t.Fatal(err)
	}
	srcEvents, cancelSrc := c.Subscribe("MIGRATION")
	defer cancelSrc()
	if err := c.Migrate(ctx, "fd:mig"); err != nil {
		t.Fatal(err)
	}
	var polls int
	mi, err := c.WaitMigration(ctx, 50*time.Millisecond, func(MigrationInfo) { polls++ })
	if err != nil {
		t.Fatalf("WaitMigration: %v (%+v)", err, mi)
	}
	t.Logf("source: %+v (progress callbacks: %d)", mi, polls)
	var srcStatuses []string
	for len(srcEvents) > 0 {
		ev := <-srcEvents
		s, _ := ev.Data["status"].(string)
		srcStatuses = append(srcStatuses, s)
	}
	t.Logf("source MIGRATION events: %v", srcStatuses)
	if mi.Status != "completed" || mi.RAM.Total == 0 {
		t.Errorf("final info = %+v", mi)
	}
	var saved []byte
	select {
	case r := <-readc:
		if r.err != nil {
			t.Fatal(r.err)
		}
		saved = r.data
	case <-ctx.Done():
		t.Fatal("pipe never reached EOF after migration completed")
	}
	if len(saved) == 0 {
		t.Fatal("migration stream is empty")
	}
	t.Logf("migration stream: %d bytes", len(saved))
	if st, err := c.Status(ctx); err != nil || st.Status != "postmigrate" {
		t.Errorf("source status = %+v, %v", st, err)
	}
	// The named fd was consumed by "migrate": closefd now fails.
	if err := c.CloseFD(ctx, "mig"); !errors.Is(err, ErrGenericError) {
		t.Errorf("closefd after migration: %v", err)
	}

	// Destination.
	dst := startQEMU(t, "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1", "-incoming", "defer")
	d := dst.dial(ctx)
	if st, err := d.Status(ctx); err != nil || st.Status != "inmigrate" {
		t.Errorf("destination status before incoming = %+v, %v", st, err)
	}
	ir, iw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer iw.Close()
	if err := d.GetFD(ctx, "in", ir); err != nil {
		ir.Close()
		t.Fatal(err)
	}
	ir.Close()
	writec := make(chan error, 1)
	go func() {
		_, err := iw.Write(saved)
		iw.Close()
		writec <- err
	}()
	// Without the "events" capability the incoming side only emits
	// MIGRATION {status: setup}.
	if err := d.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		t.Fatal(err)
	}
	migEvents, cancel := d.Subscribe("MIGRATION")
	defer cancel()
	if err := d.MigrateIncoming(ctx, "fd:in"); err != nil {
		t.Fatal(err)
	}
	if err := <-writec; err != nil {
		t.Fatalf("feeding destination: %v", err)
	}
	dmi, err := d.WaitMigration(ctx, 50*time.Millisecond, nil)
	if err != nil {
		t.Fatalf("destination WaitMigration: %v (%+v)", err, dmi)
	}
	t.Logf("destination: %+v", dmi)
	var statuses []string
collect:
	for {
		select {
		case ev := <-migEvents:
			s, _ := ev.Data["status"].(string)
			statuses = append(statuses, s)
			if s == "completed" || s == "failed" {
				break collect
			}
		case <-time.After(5 * time.Second):
			break collect
		}
	}
	t.Logf("destination MIGRATION events: %v", statuses)
	if len(statuses) == 0 || statuses[len(statuses)-1] != "completed" {
		t.Errorf("destination MIGRATION events = %v, want ending in completed", statuses)
	}
	// The source was paused, so the destination ends up paused.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := d.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status == "paused" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination status = %+v, want paused", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := d.Cont(ctx); err != nil {
		t.Fatalf("cont on destination: %v", err)
	}
	if st, err := d.Status(ctx); err != nil || !st.Running {
		t.Errorf("destination after cont = %+v, %v", st, err)
	}
	if !bytes.HasPrefix(saved, []byte("QEVM")) {
		t.Errorf("stream does not start with QEMU's magic: % x", saved[:min(8, len(saved))])
	}
	if err := d.Quit(ctx); err != nil {
		t.Errorf("destination Quit: %v", err)
	}
}

// runFirmware lets the VM run until the firmware (SeaBIOS) has numbered the
// bus behind bridgeID, then pauses it, and returns query-pci. Until then,
// query-pci lists nothing behind bridges.
func runFirmware(t *testing.T, ctx context.Context, c *Client, bridgeID string) []PCIBus {
	t.Helper()
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		buses, err := c.QueryPCI(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if br, ok := FindPCIDevice(buses, bridgeID); ok && br.PCIBridge != nil && br.PCIBridge.Bus.Secondary != 0 {
			if err := c.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			buses, err = c.QueryPCI(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return buses
		}
		if time.Now().After(deadline) {
			t.Fatalf("firmware never numbered the bus behind %s", bridgeID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

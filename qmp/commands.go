package qmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"
)

// Status is the reply of query-status.
type Status struct {
	Status  string `json:"status"` // e.g. "prelaunch", "paused", "running", "inmigrate", "postmigrate", "shutdown"
	Running bool   `json:"running"`
}

// Status runs query-status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Stop pauses the guest ("stop").
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// Cont resumes the guest ("cont").
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// SystemPowerdown asks the guest to power down (ACPI, "system_powerdown").
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit sends "quit" and waits for QEMU to close the monitor. It returns nil
// once the monitor is gone (whether or not QEMU's reply arrived before the
// close), or an error wrapping ctx's error if QEMU does not close it in time.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if err != nil && !errors.Is(err, ErrDisconnected) {
		return err
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qmp quit: waiting for QEMU to close the monitor: %w", ctx.Err())
	}
}

// MigrateSetCapabilities runs migrate-set-capabilities, e.g.
// {"xbzrle": true, "auto-converge": false}.
func (c *Client) MigrateSetCapabilities(ctx context.Context, caps map[string]bool) error {
	type capState struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	names := make([]string, 0, len(caps))
	for k := range caps {
		names = append(names, k)
	}
	sort.Strings(names)
	list := make([]capState, 0, len(names))
	for _, k := range names {
		list = append(list, capState{k, caps[k]})
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// MigrateSetParameters runs migrate-set-parameters with params as the
// arguments, e.g. {"max-bandwidth": 1 << 30, "downtime-limit": 300}.
func (c *Client) MigrateSetParameters(ctx context.Context, params map[string]any) error {
	if params == nil {
		params = map[string]any{}
	}
	return c.Execute(ctx, "migrate-set-parameters", params, nil)
}

// Migrate starts an outgoing migration to uri ("tcp:host:port", "fd:NAME",
// "unix:/path", "exec:cmd"). It returns once QEMU accepted the command; use
// WaitMigration to follow it. A device DeviceDel returned for is finalized
// first (its DEVICE_DELETED seen): QEMU 10 could hang for good in a
// precopy started while one was pending.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	if err := c.awaitAllFinalized(ctx); err != nil {
		return err
	}
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateIncoming starts an incoming migration from uri on a QEMU started
// with "-incoming defer".
func (c *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// MigrateCancel runs migrate_cancel.
func (c *Client) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// MigrationRAM is the "ram" member of query-migrate.
type MigrationRAM struct {
	Transferred      int64   `json:"transferred"` // bytes
	Remaining        int64   `json:"remaining"`   // bytes
	Total            int64   `json:"total"`       // bytes
	Duplicate        int64   `json:"duplicate"`   // pages
	Normal           int64   `json:"normal"`      // pages
	NormalBytes      int64   `json:"normal-bytes"`
	DirtyPagesRate   int64   `json:"dirty-pages-rate"`
	MbPS             float64 `json:"mbps"`
	DirtySyncCount   int64   `json:"dirty-sync-count"`
	PageSize         int64   `json:"page-size"`
	PostcopyRequests int64   `json:"postcopy-requests"`
	MultifdBytes     int64   `json:"multifd-bytes"`
}

// MigrationInfo is the reply of query-migrate. Times are in milliseconds.
// Status is "" when no migration has happened (QEMU returns {}).
type MigrationInfo struct {
	Status           string       `json:"status"`
	TotalTime        int64        `json:"total-time"`
	Downtime         int64        `json:"downtime"`
	SetupTime        int64        `json:"setup-time"`
	ExpectedDowntime int64        `json:"expected-downtime"`
	RAM              MigrationRAM `json:"ram"`
	ErrorDesc        string       `json:"error-desc"`
}

// QueryMigrate runs query-migrate.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var mi MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// WaitMigration polls query-migrate every interval (and additionally on every
// MIGRATION event) until the status is "completed", "failed" or "cancelled",
// calling progress (if non-nil) with every non-final reply. It returns the
// final info; "failed" yields an error wrapping ErrMigrationFailed with QEMU's
// error-desc, "cancelled" one wrapping ErrMigrationCancelled. It keeps polling
// while the status is "" (no migration yet), so bound it with ctx.
func (c *Client) WaitMigration(ctx context.Context, interval time.Duration, progress func(MigrationInfo)) (MigrationInfo, error) {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	events, cancel := c.Subscribe("MIGRATION")
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		mi, err := c.QueryMigrate(ctx)
		if err != nil {
			return mi, err
		}
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed":
			desc := mi.ErrorDesc
			if desc == "" {
				desc = "no error-desc from QEMU"
			}
			return mi, fmt.Errorf("%w: %s", ErrMigrationFailed, desc)
		case "cancelled":
			return mi, ErrMigrationCancelled
		}
		if progress != nil {
			progress(mi)
		}
		select {
		case <-t.C:
		case _, ok := <-events:
			if !ok {
				events = nil // disconnected: the next query fails
			}
		case <-ctx.Done():
			return mi, fmt.Errorf("qmp: waiting for migration (status %q): %w", mi.Status, ctx.Err())
		}
	}
}

// PCIBus is one element of query-pci's reply.
type PCIBus struct {
	Bus     int         `json:"bus"`
	Devices []PCIDevice `json:"devices"`
}

// PCIDevice is a device in query-pci's reply.
type PCIDevice struct {
	Bus       int          `json:"bus"`
	Slot      int          `json:"slot"`
	Function  int          `json:"function"`
	ClassInfo PCIClassInfo `json:"class_info"`
	ID        PCIDeviceID  `json:"id"`
	QdevID    string       `json:"qdev_id"`
	PCIBridge *PCIBridge   `json:"pci_bridge,omitempty"`
}

// PCIClassInfo is a PCI device's class.
type PCIClassInfo struct {
	Desc  string `json:"desc,omitempty"`
	Class int    `json:"class"`
}

// PCIDeviceID holds a PCI device's vendor/device identifiers.
type PCIDeviceID struct {
	Device          int `json:"device"`
	Vendor          int `json:"vendor"`
	Subsystem       int `json:"subsystem,omitempty"`
	SubsystemVendor int `json:"subsystem-vendor,omitempty"`
}

// PCIBridge describes the secondary side of a bridge or root port.
type PCIBridge struct {
	Bus     PCIBridgeBus `json:"bus"`
	Devices []PCIDevice  `json:"devices,omitempty"`
}

// PCIBridgeBus holds a bridge's bus numbers.
type PCIBridgeBus struct {
	Number      int `json:"number"`
	Secondary   int `json:"secondary"`
	Subordinate int `json:"subordinate"`
}

// QueryPCI runs query-pci.
func (c *Client) QueryPCI(ctx context.Context) ([]PCIBus, error) {
	var buses []PCIBus
	err := c.Execute(ctx, "query-pci", nil, &buses)
	return buses, err
}

// FindPCIDevice searches buses, recursing through bridges, for the device
// whose qdev_id is qdevID.
func FindPCIDevice(buses []PCIBus, qdevID string) (PCIDevice, bool) {
	for _, b := range buses {
		if d, ok := findPCIDevice(b.Devices, qdevID); ok {
			return d, true
		}
	}
	return PCIDevice{}, false
}

func findPCIDevice(devs []PCIDevice, qdevID string) (PCIDevice, bool) {
	for _, d := range devs {
		if d.QdevID == qdevID {
			return d, true
		}
		if d.PCIBridge != nil {
			if found, ok := findPCIDevice(d.PCIBridge.Devices, qdevID); ok {
				return found, true
			}
		}
	}
	return PCIDevice{}, false
}

// GetFD passes f to QEMU under name ("getfd"), for use as e.g. "fd:NAME" in
// migrate. QEMU dups the descriptor; the caller may close f afterwards.
func (c *Client) GetFD(ctx context.Context, name string, f *os.File) error {
	return c.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": name}, f, nil)
}

// CloseFD releases a descriptor passed with GetFD ("closefd").
func (c *Client) CloseFD(ctx context.Context, name string) error {
	return c.Execute(ctx, "closefd", map[string]any{"fdname": name}, nil)
}

package qmp

import (
	"context"
	"fmt"
	"maps"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// devicePoll is how often DeviceDel looks for the device in QEMU's device
// tree while the guest ejects it.
const devicePoll = 2 * time.Millisecond

// finalizeBound bounds how long a DeviceAdd or Migrate waits for the
// DEVICE_DELETED of a device DeviceDel returned for (a reference QEMU never
// drops must not hold a re-attach or a migration forever; for a DeviceAdd,
// QEMU then names the conflict itself).
var finalizeBound = 5 * time.Second

// DeviceAdd runs device_add with the given driver, id and extra properties.
// A device of the same id that DeviceDel returned for is finalized first
// (its DEVICE_DELETED seen): a VFIO device holds its host device until
// then, and a new one would find it busy.
func (c *Client) DeviceAdd(ctx context.Context, driver, id string, props map[string]any) error {
	if err := c.awaitFinalized(ctx, id); err != nil {
		return err
	}
	args := make(map[string]any, len(props)+2)
	for k, v := range props {
		args[k] = v
	}
	args["driver"] = driver
	args["id"] = id
	return c.Execute(ctx, "device_add", args, nil)
}

// DeviceDel runs device_del and returns once the device is gone from
// QEMU's device tree (/machine/peripheral): unrealized, its state no longer
// part of a migration or a save, its id free. QEMU emits DEVICE_DELETED
// only when the device is finalized, after its RCU callbacks, which it
// batches for up to 50 ms; DeviceDel does not wait for that (DeviceAdd of
// the same id and Migrate do). Unplug may need guest cooperation (PCIe, ACPI
// hotplug), so the wait is bounded only by ctx; on expiry the error names
// the device and wraps ctx's error. A DEVICE_UNPLUG_GUEST_ERROR for id
// fails the call immediately.
func (c *Client) DeviceDel(ctx context.Context, id string) error {
	// Subscribe first so the event cannot slip by between reply and wait.
	events, cancel := c.Subscribe("DEVICE_DELETED", "DEVICE_UNPLUG_GUEST_ERROR")
	if err := c.Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		cancel()
		return err
	}
	poll := time.NewTicker(devicePoll)
	defer poll.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				cancel()
				return fmt.Errorf("qmp device_del %q: waiting for the unplug: %w", id, c.Err())
			}
			if done, err := deviceEvent(ev, id); done {
				cancel()
				return err
			}
		case <-poll.C:
			if gone, err := c.peripheralGone(ctx, id); err == nil && gone {
				c.finalizeLater(id, events, cancel)
				return nil
			}
		case <-ctx.Done():
			cancel()
			return fmt.Errorf("qmp device_del %q: waiting for the unplug (the guest's eject): %w", id, ctx.Err())
		}
	}
}

// deviceEvent says whether ev ends the unplug of id, and how.
func deviceEvent(ev goqmp.Event, id string) (bool, error) {
	if dev, _ := ev.Data["device"].(string); dev != id {
		return false, nil
	}
	if ev.Event == "DEVICE_UNPLUG_GUEST_ERROR" {
		return true, fmt.Errorf("qmp device_del %q: guest refused unplug (DEVICE_UNPLUG_GUEST_ERROR)", id)
	}
	return true, nil
}

// peripheralGone reports whether QEMU's device tree no longer has a device
// of this id.
func (c *Client) peripheralGone(ctx context.Context, id string) (bool, error) {
	var props []struct {
		Name string `json:"name"`
	}
	if err := c.Execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &props); err != nil {
		return false, err
	}
	for _, p := range props {
		if p.Name == id {
			return false, nil
		}
	}
	return true, nil
}

// finalizeLater records id as finalizing until its DEVICE_DELETED arrives
// on events (or the bound passes, or the monitor goes away).
func (c *Client) finalizeLater(id string, events <-chan goqmp.Event, cancel func()) {
	fin := make(chan struct{})
	c.mu.Lock()
	c.finalizing[id] = fin
	c.mu.Unlock()
	go func() {
		defer func() {
			cancel()
			c.mu.Lock()
			if c.finalizing[id] == fin {
				delete(c.finalizing, id)
			}
			c.mu.Unlock()
			close(fin)
		}()
		bound := time.NewTimer(finalizeBound)
		defer bound.Stop()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return
				}
				if done, _ := deviceEvent(ev, id); done {
					return
				}
			case <-bound.C:
				return
			}
		}
	}()
}

// awaitFinalized waits, bounded by ctx, until no earlier device of this
// id is being finalized.
func (c *Client) awaitFinalized(ctx context.Context, id string) error {
	c.mu.Lock()
	fin := c.finalizing[id]
	c.mu.Unlock()
	if fin == nil {
		return nil
	}
	select {
	case <-fin:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qmp device_add %q: waiting for the earlier %q's DEVICE_DELETED: %w", id, id, ctx.Err())
	}
}

// awaitAllFinalized waits, bounded by ctx, until no device DeviceDel
// returned for is being finalized.
func (c *Client) awaitAllFinalized(ctx context.Context) error {
	c.mu.Lock()
	fins := maps.Clone(c.finalizing)
	c.mu.Unlock()
	for id, fin := range fins {
		select {
		case <-fin:
		case <-ctx.Done():
			return fmt.Errorf("qmp migrate: waiting for the unplugged %q's DEVICE_DELETED: %w", id, ctx.Err())
		}
	}
	return nil
}

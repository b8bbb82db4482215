package qmp

import (
	"context"
	"fmt"
	"time"
)

// YankInstance is one member of query-yank's reply.
type YankInstance struct {
	Type string `json:"type"` // "block-node", "chardev" or "migration"
}

// QueryYank runs query-yank: the instances whose connections QEMU could
// cut. An outgoing migration's is registered at its start and removed
// as the very last act of its cleanup (migration_cleanup), after its
// multifd channels are closed.
func (c *Client) QueryYank(ctx context.Context) ([]YankInstance, error) {
	var list []YankInstance
	err := c.Execute(ctx, "query-yank", nil, &list)
	return list, err
}

// MigrationCapabilities runs query-migrate-capabilities.
func (c *Client) MigrationCapabilities(ctx context.Context) (map[string]bool, error) {
	var list []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := c.Execute(ctx, "query-migrate-capabilities", nil, &list); err != nil {
		return nil, err
	}
	caps := make(map[string]bool, len(list))
	for _, cs := range list {
		caps[cs.Capability] = cs.State
	}
	return caps, nil
}

// WaitMigrationTornDown waits, polling every interval, until QEMU has
// finished cleaning up its last outgoing migration: query-migrate says
// "failed" (or "cancelled", "completed") when the migration thread ends,
// before the cleanup that closes a multifd migration's channels, and that
// cleanup reads the migration capabilities again (QEMU 10.0's
// multifd_send_shutdown returns at once when multifd is off, leaving the
// channels registered, and the yank assertion aborts QEMU). The end of
// the cleanup shows as the migration yank instance's removal.
func (c *Client) WaitMigrationTornDown(ctx context.Context, interval time.Duration) error {
	for {
		list, err := c.QueryYank(ctx)
		if err != nil {
			return err
		}
		if !hasMigrationYank(list) {
			return nil
		}
		select {
		case <-time.After(interval):
		case <-ctx.Done():
			return fmt.Errorf("qmp: waiting for the migration's cleanup: %w", ctx.Err())
		}
	}
}

func hasMigrationYank(list []YankInstance) bool {
	for _, y := range list {
		if y.Type == "migration" {
			return true
		}
	}
	return false
}

package qmp

import (
	"context"
	"fmt"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// BlockInfo is one entry of query-block: a block backend and, if a medium
// is inserted, its top node.
type BlockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		NodeName string `json:"node-name"`
		File     string `json:"file"`
		Drv      string `json:"drv"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
		} `json:"image"`
	} `json:"inserted"`
}

// QueryBlock runs query-block.
func (c *Client) QueryBlock(ctx context.Context) ([]BlockInfo, error) {
	var v []BlockInfo
	err := c.Execute(ctx, "query-block", nil, &v)
	return v, err
}

// BlockNode is one entry of query-named-block-nodes.
type BlockNode struct {
	NodeName string `json:"node-name"`
	File     string `json:"file"`
	Drv      string `json:"drv"`
}

// QueryNamedBlockNodes runs query-named-block-nodes (flat: every node once).
func (c *Client) QueryNamedBlockNodes(ctx context.Context) ([]BlockNode, error) {
	var v []BlockNode
	err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &v)
	return v, err
}

// BlockdevAddQcow2 opens the qcow2 image at path as node name, without its
// backing file (blockdev-snapshot gives it the node it covers).
func (c *Client) BlockdevAddQcow2(ctx context.Context, name, path string) error {
	return c.Execute(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": name,
		"file": map[string]any{"driver": "file", "filename": path}, "backing": nil}, nil)
}

// BlockdevSnapshot makes overlay the active layer over node: the device
// writes to overlay from now on, node becomes its read-only backing.
func (c *Client) BlockdevSnapshot(ctx context.Context, node, overlay string) error {
	return c.Execute(ctx, "blockdev-snapshot", map[string]any{"node": node, "overlay": overlay}, nil)
}

// BlockdevDel removes a node no device uses.
func (c *Client) BlockdevDel(ctx context.Context, name string) error {
	return c.Execute(ctx, "blockdev-del", map[string]any{"node-name": name}, nil)
}

// BlockCommit merges the layers from top down to (not including) base
// into base, as job id on the chain of the device's active node; it waits
// for the job's end.
func (c *Client) BlockCommit(ctx context.Context, id, device, top, base string) error {
	events, cancel := c.Subscribe("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR")
	defer cancel()
	err := c.Execute(ctx, "block-commit", map[string]any{"job-id": id, "device": device,
		"top-node": top, "base-node": base}, nil)
	if err != nil {
		return err
	}
	return c.waitJob(ctx, id, events)
}

// blockJob is one entry of query-block-jobs.
type blockJob struct {
	Device string `json:"device"`
}

// waitJob waits for block job id to end (events, else polled).
func (c *Client) waitJob(ctx context.Context, id string, events <-chan goqmp.Event) error {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case e, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if e.Data["device"] != id {
				continue
			}
			switch e.Event {
			case "BLOCK_JOB_COMPLETED":
				if msg, ok := e.Data["error"].(string); ok && msg != "" {
					return fmt.Errorf("qmp: block job %s: %s", id, msg)
				}
				return nil
			case "BLOCK_JOB_CANCELLED":
				return fmt.Errorf("qmp: block job %s cancelled", id)
			}
		case <-t.C:
			var jobs []blockJob
			if err := c.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
				return err
			}
			found := false
			for _, j := range jobs {
				found = found || j.Device == id
			}
			if !found {
				return nil // ended between two events; auto-dismissed
			}
		case <-ctx.Done():
			return fmt.Errorf("qmp: waiting for block job %s: %w", id, ctx.Err())
		}
	}
}

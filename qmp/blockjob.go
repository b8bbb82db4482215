package qmp

import (
	"context"
)

// The block layer's commands a storage migration uses: an NBD client
// node on the source, a mirror job into it, and an NBD export on the
// destination.

// BlockdevAdd adds a node to the block graph ("blockdev-add"); options
// are the command's arguments (driver, node-name, ...).
func (c *Client) BlockdevAdd(ctx context.Context, options map[string]any) error {
	return c.Execute(ctx, "blockdev-add", options, nil)
}

// MirrorOptions are blockdev-mirror's arguments.
type MirrorOptions struct {
	JobID  string `json:"job-id"`
	Device string `json:"device"`
	Target string `json:"target"`
	Sync   string `json:"sync"` // full | top | none
	// CopyMode: "background" (default) or "write-blocking": every guest
	// write is also written to the target before it completes, so the
	// job converges however fast the guest writes.
	CopyMode string `json:"copy-mode,omitempty"`
}

// BlockdevMirror starts a mirror job ("blockdev-mirror").
func (c *Client) BlockdevMirror(ctx context.Context, o MirrorOptions) error {
	return c.Execute(ctx, "blockdev-mirror", o, nil)
}

// BlockJob is one entry of query-block-jobs.
type BlockJob struct {
	Device string `json:"device"` // the job's id
	Type   string `json:"type"`
	Len    int64  `json:"len"`
	Offset int64  `json:"offset"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// QueryBlockJobs lists the running block jobs.
func (c *Client) QueryBlockJobs(ctx context.Context) ([]BlockJob, error) {
	var jobs []BlockJob
	err := c.Execute(ctx, "query-block-jobs", nil, &jobs)
	return jobs, err
}

// BlockJobCancel cancels a job ("block-job-cancel"). On a mirror that is
// ready and not forced, the job first brings the target in sync and ends
// with BLOCK_JOB_COMPLETED: the target is a consistent copy of the source
// at that moment.
func (c *Client) BlockJobCancel(ctx context.Context, job string, force bool) error {
	return c.Execute(ctx, "block-job-cancel", map[string]any{"device": job, "force": force}, nil)
}

// NBDServerStartFD starts QEMU's NBD server on a listening socket passed
// with GetFD under name ("nbd-server-start").
func (c *Client) NBDServerStartFD(ctx context.Context, name string) error {
	return c.Execute(ctx, "nbd-server-start", map[string]any{
		"addr": map[string]any{"type": "fd", "data": map[string]any{"str": name}}}, nil)
}

// NBDServerStop stops the NBD server and removes its exports.
func (c *Client) NBDServerStop(ctx context.Context) error {
	return c.Execute(ctx, "nbd-server-stop", nil, nil)
}

// BlockExportAddNBD exports node under name on the NBD server
// ("block-export-add"); the export activates an incoming VM's image.
func (c *Client) BlockExportAddNBD(ctx context.Context, id, node, name string, writable bool) error {
	return c.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": id,
		"node-name": node, "name": name, "writable": writable}, nil)
}

// BlockExport is one entry of query-block-exports.
type BlockExport struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	NodeName string `json:"node-name"`
}

// QueryBlockExports lists the block exports.
func (c *Client) QueryBlockExports(ctx context.Context) ([]BlockExport, error) {
	var exps []BlockExport
	err := c.Execute(ctx, "query-block-exports", nil, &exps)
	return exps, err
}

// NBDClientOverFD is blockdev-add's options for an NBD client node named
// node that reads and writes export over the socket passed with GetFD
// under fdName. It never reconnects: a broken connection fails its I/O.
func NBDClientOverFD(node, fdName, export string) map[string]any {
	return map[string]any{"driver": "nbd", "node-name": node, "export": export,
		"server": map[string]any{"type": "fd", "str": fdName}}
}

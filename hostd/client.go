package hostd

import (
	"context"
	"crypto/tls"
	"net/url"
	"time"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Client talks to a hostd API, on a unix socket ("/path" or "unix:/path")
// or TCP ("host:port").
type Client struct{ api *jsonapi.Client }

// NewClient returns a client for addr.
func NewClient(addr string) *Client { return NewClientTLS(addr, nil) }

// NewClientTLS returns a client that speaks HTTPS with cfg (mutual TLS)
// to a TCP address; a unix socket stays plain (local, root-only).
func NewClientTLS(addr string, cfg *tls.Config) *Client {
	return &Client{api: jsonapi.NewClient("hostd", addr, cfg, errorCodes)}
}

// Addr returns the address the client talks to.
func (c *Client) Addr() string { return c.api.Addr() }

// Local reports whether the hostd is reached on a unix socket (this host).
func (c *Client) Local() bool { return c.api.Local() }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	return c.api.Do(ctx, method, path, body, out)
}

// streamOp runs a streamed operation, passing progress to fn.
func (c *Client) streamOp(ctx context.Context, path string, body, out any, progress ProgressFunc) error {
	return c.api.Stream(ctx, path, body, out, jsonapi.Progress(progress))
}

func vmPath(name string, rest string) string { return "/v1/vms/" + url.PathEscape(name) + rest }

// Create registers a VM and optionally starts it.
func (c *Client) Create(ctx context.Context, spec Spec, start bool) (VMInfo, error) {
	var info VMInfo
	err := c.do(ctx, "POST", "/v1/vms", map[string]any{"spec": spec, "start": start}, &info)
	return info, err
}

// List returns every VM on the host.
func (c *Client) List(ctx context.Context) ([]VMInfo, error) {
	var out []VMInfo
	err := c.do(ctx, "GET", "/v1/vms", nil, &out)
	return out, err
}

// Status returns one VM.
func (c *Client) Status(ctx context.Context, name string) (VMInfo, error) {
	var info VMInfo
	err := c.do(ctx, "GET", vmPath(name, ""), nil, &info)
	return info, err
}

// Delete removes a stopped VM.
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", vmPath(name, ""), nil, nil)
}

// Action runs start, pause or resume.
func (c *Client) Action(ctx context.Context, name, action string) (VMInfo, error) {
	var info VMInfo
	err := c.do(ctx, "POST", vmPath(name, "/"+action), nil, &info)
	return info, err
}

// Stop stops a VM, killing it after timeout (0: the host's default).
func (c *Client) Stop(ctx context.Context, name string, timeout time.Duration) (VMInfo, error) {
	var info VMInfo
	err := c.do(ctx, "POST", vmPath(name, "/stop"), map[string]any{"timeout_ns": timeout}, &info)
	return info, err
}

// Device detaches or attaches a passthrough device.
func (c *Client) Device(ctx context.Context, name, dev, action string) (VMInfo, error) {
	var info VMInfo
	err := c.do(ctx, "POST", vmPath(name, "/devices/"+url.PathEscape(dev)+"/"+action), nil, &info)
	return info, err
}

// Checkpoint saves a VM into a directory on the host.
func (c *Client) Checkpoint(ctx context.Context, name string, opts CheckpointOptions, p ProgressFunc) (CheckpointResult, error) {
	var res CheckpointResult
	err := c.streamOp(ctx, vmPath(name, "/checkpoint"), opts, &res, p)
	return res, err
}

// Restore starts a VM from a checkpoint directory on the host.
func (c *Client) Restore(ctx context.Context, opts RestoreOptions, p ProgressFunc) (VMInfo, error) {
	var info VMInfo
	err := c.streamOp(ctx, "/v1/restore", opts, &info, p)
	return info, err
}

// Migrate live-migrates a VM to another hostd.
func (c *Client) Migrate(ctx context.Context, name string, opts MigrateOptions, p ProgressFunc) (MigrateResult, error) {
	var res MigrateResult
	err := c.streamOp(ctx, vmPath(name, "/migrate"), opts, &res, p)
	return res, err
}

// Incoming asks this host to receive a migration.
func (c *Client) Incoming(ctx context.Context, req IncomingRequest) (IncomingResponse, error) {
	var resp IncomingResponse
	err := c.do(ctx, "POST", "/v1/incoming", req, &resp)
	return resp, err
}

// FinishIncoming completes a received migration.
func (c *Client) FinishIncoming(ctx context.Context, name string) (VMInfo, error) {
	var info VMInfo
	err := c.do(ctx, "POST", vmPath(name, "/incoming/finish"), nil, &info)
	return info, err
}

// InjectFrames hands a migration's destination frames its source's tap
// received while the VM was paused there.
func (c *Client) InjectFrames(ctx context.Context, name string, req FramesRequest) error {
	return c.do(ctx, "POST", vmPath(name, "/incoming/frames"), req, nil)
}

// AbortIncoming discards a received migration.
func (c *Client) AbortIncoming(ctx context.Context, name string) error {
	return c.do(ctx, "POST", vmPath(name, "/incoming/abort"), nil, nil)
}

// Rejuvenate warm-restarts one VM's QEMU.
func (c *Client) Rejuvenate(ctx context.Context, name string, opts RejuvenateOptions) (RejuvenateResult, error) {
	var res RejuvenateResult
	err := c.do(ctx, "POST", vmPath(name, "/rejuvenate"), opts, &res)
	return res, err
}

// RejuvenateHost warm-restarts every VM of the host.
func (c *Client) RejuvenateHost(ctx context.Context, opts RejuvenateOptions) ([]RejuvenateResult, error) {
	var res []RejuvenateResult
	err := c.do(ctx, "POST", "/v1/rejuvenate", opts, &res)
	return res, err
}

// HostInfo describes a hostd.
type HostInfo struct {
	Accel             string                         `json:"accel"`
	MigrationAddress  string                         `json:"migration_address"`
	Pools             map[string][]map[string]string `json:"pools"`
	QEMU              string                         `json:"qemu"`
	PID               int                            `json:"pid"`
	StartedAt         time.Time                      `json:"started_at"`
	StaleSharedMemory []string                       `json:"stale_shared_memory"`
	Capacity          HostCapacity                   `json:"capacity"`
}

// Host returns the hostd's description.
func (c *Client) Host(ctx context.Context) (HostInfo, error) {
	var hi HostInfo
	err := c.do(ctx, "GET", "/v1/host", nil, &hi)
	return hi, err
}

// RestartHostd replaces the hostd process (optionally with another
// binary); VMs keep running and are re-adopted.
func (c *Client) RestartHostd(ctx context.Context, binary string) error {
	return c.do(ctx, "POST", "/v1/host/restart", map[string]string{"binary": binary}, nil)
}

// Drill runs a cooperation round with the guest that changes nothing.
func (c *Client) Drill(ctx context.Context, name string) (DrillResult, error) {
	var res DrillResult
	err := c.do(ctx, "POST", vmPath(name, "/drill"), nil, &res)
	return res, err
}

// Step runs one coordinator step.
func (c *Client) Step(ctx context.Context, req StepRequest) (StepResult, error) {
	var res StepResult
	err := c.do(ctx, "POST", "/v1/steps", req, &res)
	return res, err
}

// RenewLeases extends an operation's leases on the host, as the
// coordinator of the given epoch (0: a single coordinator).
func (c *Client) RenewLeases(ctx context.Context, op string, d time.Duration, epoch int64) error {
	return c.do(ctx, "POST", "/v1/leases/renew", map[string]any{"op": op, "lease_ns": d, "epoch": epoch}, nil)
}

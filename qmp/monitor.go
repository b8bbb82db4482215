package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// Client satisfies go-qemu's qmp.Monitor, so go-qemu's generated raw API
// (raw.NewMonitor(c)) runs on it.
var _ goqmp.Monitor = (*Client)(nil)

// Connect implements go-qemu's qmp.Monitor. The handshake already happened in
// Dial/New, so Connect only reports whether the monitor is still connected.
func (c *Client) Connect() error {
	if c.isClosed() {
		return c.Err()
	}
	return nil
}

// Disconnect implements go-qemu's qmp.Monitor; it is Close.
func (c *Client) Disconnect() error { return c.Close() }

// Run implements go-qemu's qmp.Monitor: command is a complete JSON command
// ({"execute": ..., "arguments": ...}); any "id" is replaced by the client's
// own. It returns the whole reply message, or an *Error for a QMP error.
// Run has no context: it returns when QEMU replies or the monitor goes away.
// Prefer Execute in new code.
func (c *Client) Run(command []byte) ([]byte, error) {
	return c.RunContext(context.Background(), command)
}

// RunContext is Run bounded by ctx.
func (c *Client) RunContext(ctx context.Context, command []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(command, &m); err != nil {
		return nil, fmt.Errorf("qmp: run: invalid command: %w", err)
	}
	var cmd string
	if err := json.Unmarshal(m["execute"], &cmd); err != nil || cmd == "" {
		return nil, fmt.Errorf("qmp: run: command has no \"execute\" member")
	}
	if a, ok := m["arguments"]; ok && string(a) == "null" {
		delete(m, "arguments")
	}
	id := "symvirt-" + strconv.FormatUint(c.nextID.Add(1), 10)
	m["id"], _ = json.Marshal(id)
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: encoding request: %w", cmd, err)
	}
	rp, err := c.roundTrip(ctx, cmd, id, b, nil)
	if err != nil {
		return nil, err
	}
	if rp.err != nil {
		return nil, rp.err
	}
	return rp.raw, nil
}

// Events implements go-qemu's qmp.Monitor: a subscription to all events that
// is cancelled (and its channel closed) when ctx is done or the client
// disconnects. Like Subscribe, a full channel drops events.
func (c *Client) Events(ctx context.Context) (<-chan goqmp.Event, error) {
	if c.isClosed() {
		return nil, c.Err()
	}
	ch, cancel := c.Subscribe()
	go func() {
		select {
		case <-ctx.Done():
		case <-c.done:
		}
		cancel()
	}()
	return ch, nil
}

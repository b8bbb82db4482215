package coord

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

var codes = jsonapi.Codes{{Code: "not_found", Err: ErrNotFound}, {Code: "exists", Err: ErrExists},
	{Code: "invalid", Err: ErrInvalid}, {Code: "busy", Err: ErrBusy}, {Code: "failed", Err: ErrFailed},
	{Code: "no_capacity", Err: ErrNoCapacity}}

func codeOf(err error) string { return codes.Of(err) }

// Handler is the coordinator's API.
func (c *Coord) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/hosts", func(w http.ResponseWriter, r *http.Request) { reply(w)(c.Hosts()) })
	mux.HandleFunc("POST /v1/hosts", func(w http.ResponseWriter, r *http.Request) {
		var h Host
		if decode(w, r, &h) {
			reply(w)(h, c.AddHost(h))
		}
	})
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) { reply(w)(c.Jobs()) })
	mux.HandleFunc("GET /v1/jobs/{name}", func(w http.ResponseWriter, r *http.Request) { reply(w)(c.Job(r.PathValue("name"))) })
	mux.HandleFunc("POST /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		var j Job
		if decode(w, r, &j) {
			reply(w)(c.CreateJob(context.WithoutCancel(r.Context()), j))
		}
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { reply(w)(c.Status(r.Context())) })
	mux.HandleFunc("GET /v1/checkpoints", func(w http.ResponseWriter, r *http.Request) { reply(w)(c.Checkpoints()) })
	mux.HandleFunc("GET /v1/checkpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		reply(w)(c.CheckpointByID(r.PathValue("id")))
	})
	mux.HandleFunc("DELETE /v1/checkpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		reply(w)(map[string]string{"removed": id}, c.RemoveCheckpoint(context.WithoutCancel(r.Context()), id))
	})
	mux.HandleFunc("GET /v1/ops", func(w http.ResponseWriter, r *http.Request) { reply(w)(c.Ops()) })
	mux.HandleFunc("POST /v1/jobs/{name}/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		var o CheckpointOptions
		if decode(w, r, &o) {
			stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
				return c.Checkpoint(ctx, r.PathValue("name"), o, p)
			})
		}
	})
	mux.HandleFunc("POST /v1/jobs/{name}/restart", func(w http.ResponseWriter, r *http.Request) {
		var o RestartOptions
		if decode(w, r, &o) {
			stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
				return c.Restart(ctx, r.PathValue("name"), o, p)
			})
		}
	})
	mux.HandleFunc("POST /v1/migrate/{target}", func(w http.ResponseWriter, r *http.Request) {
		var o MigrateOptions
		if decode(w, r, &o) {
			stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
				return c.Migrate(ctx, r.PathValue("target"), o, p)
			})
		}
	})
	mux.HandleFunc("POST /v1/hosts/{name}/evacuate", func(w http.ResponseWriter, r *http.Request) {
		var o struct {
			Live bool `json:"live"`
		}
		if decode(w, r, &o) {
			stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
				return c.Evacuate(ctx, r.PathValue("name"), o.Live, p)
			})
		}
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<20))
	if err == nil && len(bytes.TrimSpace(data)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		err = dec.Decode(v)
	}
	if err != nil {
		writeErr(w, fmt.Errorf("request body: %w: %v", ErrInvalid, err))
		return false
	}
	return true
}

func reply(w http.ResponseWriter) func(v any, err error) {
	return func(v any, err error) {
		if err != nil {
			writeErr(w, err)
			return
		}
		jsonapi.WriteJSON(w, v)
	}
}

func writeErr(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch codeOf(err) {
	case "not_found":
		status = http.StatusNotFound
	case "exists", "busy":
		status = http.StatusConflict
	case "invalid":
		status = http.StatusBadRequest
	}
	jsonapi.WriteError(w, status, codeOf(err), err)
}

// stream runs an operation with NDJSON progress; a failed operation's
// result still goes with its error (it says what happened to each VM).
func stream(w http.ResponseWriter, r *http.Request, op func(context.Context, ProgressFunc) (any, error)) {
	jsonapi.Stream(w, r, codeOf, func(ctx context.Context, send func(any)) (any, error) {
		return op(ctx, func(p Progress) { send(p) })
	})
}

// Client talks to a coordinator.
type Client struct{ api *jsonapi.Client }

// NewClient returns a client for a unix socket path or an https host:port
// (cfg: the operator's client certificate).
func NewClient(addr string, cfg *tls.Config) *Client {
	return &Client{api: jsonapi.NewClient("coord", addr, cfg, codes)}
}

// Do runs a plain request.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	return c.api.Do(ctx, method, path, body, out)
}

// Stream runs a streamed operation; out receives the result even when the
// operation failed (it says what happened to each VM).
func (c *Client) Stream(ctx context.Context, path string, body, out any, progress ProgressFunc) error {
	return c.api.Stream(ctx, path, body, out, func(raw json.RawMessage) {
		var p Progress
		if progress != nil && json.Unmarshal(raw, &p) == nil {
			progress(p)
		}
	})
}

// Checkpoint checkpoints a job (live: each VM copied while it runs).
func (c *Client) Checkpoint(ctx context.Context, job string, o CheckpointOptions, p ProgressFunc) (machine.Result, error) {
	var res machine.Result
	err := c.Stream(ctx, "/v1/jobs/"+url.PathEscape(job)+"/checkpoint", o, &res, p)
	return res, err
}

// Restart restarts a job from a checkpoint.
func (c *Client) Restart(ctx context.Context, job string, o RestartOptions, p ProgressFunc) (machine.Result, error) {
	var res machine.Result
	err := c.Stream(ctx, "/v1/jobs/"+url.PathEscape(job)+"/restart", o, &res, p)
	return res, err
}

// Migrate moves a job or a VM.
func (c *Client) Migrate(ctx context.Context, target string, o MigrateOptions, p ProgressFunc) (machine.Result, error) {
	var res machine.Result
	err := c.Stream(ctx, "/v1/migrate/"+url.PathEscape(target), o, &res, p)
	return res, err
}

// Evacuate empties a host.
func (c *Client) Evacuate(ctx context.Context, host string, live bool, p ProgressFunc) ([]machine.Result, error) {
	var res []machine.Result
	err := c.Stream(ctx, "/v1/hosts/"+url.PathEscape(host)+"/evacuate", map[string]bool{"live": live}, &res, p)
	return res, err
}

// WaitUp waits until the coordinator answers.
func (c *Client) WaitUp(ctx context.Context) error {
	for {
		var hs []Host
		if err := c.Do(ctx, "GET", "/v1/hosts", nil, &hs); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

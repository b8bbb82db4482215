package coord

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

// event is one NDJSON line of a streamed operation: progress lines, then
// one result or error line.
type event struct {
	Progress *Progress       `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *apiError       `json:"error,omitempty"`
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

var codes = []struct {
	code string
	err  error
}{{"not_found", ErrNotFound}, {"exists", ErrExists}, {"invalid", ErrInvalid}, {"busy", ErrBusy},
	{"failed", ErrFailed}, {"no_capacity", ErrNoCapacity}}

func codeOf(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func decodeErr(ae *apiError) error {
	for _, c := range codes {
		if c.code == ae.Code {
			return &remoteError{ae.Message, c.err}
		}
	}
	return &remoteError{ae.Message, nil}
}

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
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
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
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(event{Error: &apiError{Code: codeOf(err), Message: err.Error()}})
}

// stream runs an operation with NDJSON progress; it goes on if the
// client leaves (the operation must finish or roll back either way).
func stream(w http.ResponseWriter, r *http.Request, op func(context.Context, ProgressFunc) (any, error)) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	var mu sync.Mutex
	gone := false
	send := func(ev event) {
		mu.Lock()
		defer mu.Unlock()
		if gone {
			return
		}
		if json.NewEncoder(w).Encode(ev) != nil {
			gone = true
			return
		}
		if fl != nil {
			fl.Flush()
		}
	}
	res, err := op(context.WithoutCancel(r.Context()), func(p Progress) { send(event{Progress: &p}) })
	data, _ := json.Marshal(res)
	if err != nil {
		// The result explains what happened to each VM: send both.
		send(event{Result: data, Error: &apiError{Code: codeOf(err), Message: err.Error()}})
		return
	}
	send(event{Result: data})
}

// Client talks to a coordinator.
type Client struct {
	addr, base string
	http       *http.Client
}

// NewClient returns a client for a unix socket path or an https host:port
// (cfg: the operator's client certificate).
func NewClient(addr string, cfg *tls.Config) *Client {
	tr := &http.Transport{}
	c := &Client{addr: addr}
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "unix:") {
		path := strings.TrimPrefix(addr, "unix:")
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		c.base = "http://coord"
	} else {
		c.base = "http://" + addr
		if cfg != nil {
			tr.TLSClientConfig = cfg.Clone()
			c.base = "https://" + addr
		}
	}
	c.http = &http.Client{Transport: tr}
	return c
}

func (c *Client) req(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	rq, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(rq)
	if err != nil {
		return nil, fmt.Errorf("coord %s: %w", c.addr, err)
	}
	return resp, nil
}

// Do runs a plain request.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.req(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ev event
		if json.Unmarshal(data, &ev) == nil && ev.Error != nil {
			return decodeErr(ev.Error)
		}
		return fmt.Errorf("coord %s: %s: %s", c.addr, resp.Status, bytes.TrimSpace(data))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// Stream runs a streamed operation; out receives the result even when the
// operation failed (it says what happened to each VM).
func (c *Client) Stream(ctx context.Context, path string, body, out any, progress ProgressFunc) error {
	resp, err := c.req(ctx, "POST", path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var ev event
		if json.Unmarshal(data, &ev) == nil && ev.Error != nil {
			return decodeErr(ev.Error)
		}
		return fmt.Errorf("coord %s: %s", c.addr, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var ev event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("coord %s: bad stream line: %w", c.addr, err)
		}
		if ev.Progress != nil {
			if progress != nil {
				progress(*ev.Progress)
			}
			continue
		}
		if ev.Result != nil && out != nil {
			json.Unmarshal(ev.Result, out)
		}
		if ev.Error != nil {
			return decodeErr(ev.Error)
		}
		return nil
	}
	return fmt.Errorf("coord %s: stream ended without a result: %v", c.addr, sc.Err())
}

// Checkpoint checkpoints a job (live: by background snapshots).
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

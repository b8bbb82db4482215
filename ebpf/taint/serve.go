package taint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// DefaultSocket is where guestd serves the tracker to `symvirt taint`.
const DefaultSocket = "/run/symvirt/taint.sock"

// The API, JSON over HTTP on a unix socket:
//
//	GET  /v1/taints          -> []Taint
//	GET  /v1/taints/{pid}    -> Taint, or 404 if pid is not tainted
//	POST /v1/reset?pid=N     -> Counts (pid 0 or absent: every process)
//	GET  /v1/counts          -> Counts
//
// Errors are {"error": "..."} with a 4xx or 5xx status.

// Counts is the JSON form of Tracker.Counts.
type Counts struct {
	Tainted uint64 `json:"tainted"`
	Events  uint64 `json:"events"`
}

// Listen creates a unix socket at path for Serve: it makes the directory,
// replaces a stale socket and leaves the socket readable by root only.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("taint: listen: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("taint: listen: %s is in use by another process", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("taint: listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("taint: listen: %w", err)
	}
	return l, nil
}

// Serve answers API requests on l until l is closed; it then returns nil.
func Serve(l net.Listener, src Source) error {
	srv := &http.Server{Handler: Handler(src), ReadHeaderTimeout: 10 * time.Second}
	err := srv.Serve(l)
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Handler is the API as an http.Handler, for a daemon that serves it on a
// listener of its own.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/taints", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, src.Tainted())
	})
	mux.HandleFunc("GET /v1/taints/{pid}", func(w http.ResponseWriter, r *http.Request) {
		pid, err := strconv.Atoi(r.PathValue("pid"))
		if err != nil || pid <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("bad pid %q", r.PathValue("pid")))
			return
		}
		tt, ok := src.IsTainted(pid)
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Errorf("process %d is not tainted", pid))
			return
		}
		writeJSON(w, http.StatusOK, tt)
	})
	mux.HandleFunc("POST /v1/reset", func(w http.ResponseWriter, r *http.Request) {
		pid := 0
		if s := r.URL.Query().Get("pid"); s != "" {
			var err error
			if pid, err = strconv.Atoi(s); err != nil || pid < 0 {
				writeError(w, http.StatusBadRequest, fmt.Errorf("bad pid %q", s))
				return
			}
		}
		if err := src.Reset(pid); err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, counts(src))
	})
	mux.HandleFunc("GET /v1/counts", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, counts(src))
	})
	return mux
}

func counts(src Source) Counts {
	n, ev := src.Counts()
	return Counts{Tainted: n, Events: ev}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// Client talks to Serve over its unix socket.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client for the socket at path (DefaultSocket if
// empty).
func NewClient(path string) *Client {
	if path == "" {
		path = DefaultSocket
	}
	var d net.Dialer
	return &Client{
		path: path,
		hc: &http.Client{
			Timeout: 30 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return d.DialContext(ctx, "unix", path)
				},
			},
		},
	}
}

// Query lists the tainted processes known to the server at path.
func Query(ctx context.Context, path string) ([]Taint, error) {
	return NewClient(path).List(ctx)
}

// List returns the tainted processes.
func (c *Client) List(ctx context.Context) ([]Taint, error) {
	var out []Taint
	return out, c.call(ctx, http.MethodGet, "/v1/taints", &out)
}

// Get returns why pid is tainted; ok is false if it is not.
func (c *Client) Get(ctx context.Context, pid int) (tt Taint, ok bool, err error) {
	err = c.call(ctx, http.MethodGet, "/v1/taints/"+strconv.Itoa(pid), &tt)
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusNotFound {
		return Taint{}, false, nil
	}
	return tt, err == nil, err
}

// Reset untaints pid, or every process for 0.
func (c *Client) Reset(ctx context.Context, pid int) (Counts, error) {
	var out Counts
	return out, c.call(ctx, http.MethodPost, "/v1/reset?pid="+url.QueryEscape(strconv.Itoa(pid)), &out)
}

// Counts returns the server's counters.
func (c *Client) Counts(ctx context.Context) (Counts, error) {
	var out Counts
	return out, c.call(ctx, http.MethodGet, "/v1/counts", &out)
}

type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func (c *Client) call(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://taint"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("taint tracker at %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("taint tracker at %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := resp.Status
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return &statusError{code: resp.StatusCode, msg: fmt.Sprintf("taint tracker at %s: %s", c.path, msg)}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("taint tracker at %s: bad answer: %w", c.path, err)
	}
	return nil
}

package jsonapi

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Error is an API error on the wire.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Event is one line of a stream.
type Event struct {
	Progress json.RawMessage `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *Error          `json:"error,omitempty"`
}

// ErrNoResult: the stream ended without its last line (the server died).
var ErrNoResult = errors.New("stream ended without a result")

// The sentinels both APIs share: hostd and coord re-export them, so "not
// found" is one error whichever side says it.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid request")
	ErrBusy     = errors.New("another operation is in progress")
)

// Shared gives the shared sentinels their codes; each API's table starts
// with it.
var Shared = Codes{
	{Code: "not_found", Err: ErrNotFound, Status: http.StatusNotFound},
	{Code: "exists", Err: ErrExists, Status: http.StatusConflict},
	{Code: "invalid", Err: ErrInvalid, Status: http.StatusBadRequest},
	{Code: "busy", Err: ErrBusy, Status: http.StatusConflict},
}

// Codes maps sentinel errors to stable wire codes and HTTP statuses, in
// order (an error wrapping several sentinels maps to the first).
type Codes []struct {
	Code   string
	Err    error
	Status int // 0: 500
}

// Of returns err's code ("internal" for none).
func (c Codes) Of(err error) string {
	code, _ := c.lookup(err)
	return code
}

func (c Codes) lookup(err error) (string, int) {
	for _, x := range c {
		if errors.Is(err, x.Err) {
			return x.Code, cmp.Or(x.Status, http.StatusInternalServerError)
		}
	}
	return "internal", http.StatusInternalServerError
}

// Decode turns a wire error back into an error whose message is the
// server's and that errors.Is matches against the server's sentinel.
func (c Codes) Decode(e *Error) error {
	if e == nil {
		return errors.New("unknown error")
	}
	for _, x := range c {
		if x.Code == e.Code {
			return &remote{e.Message, x.Err}
		}
	}
	return &remote{e.Message, nil}
}

type remote struct {
	msg      string
	sentinel error
}

func (e *remote) Error() string { return e.msg }
func (e *remote) Unwrap() error { return e.sentinel }

// ReadStream reads a stream: progress lines go to progress, the result
// into out (when there is one), and the wire error, if any, is returned
// decoded by codes.
func ReadStream(body io.Reader, codes Codes, progress func(json.RawMessage), out any) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("bad stream line: %w", err)
		}
		if ev.Progress != nil {
			if progress != nil {
				progress(ev.Progress)
			}
			continue
		}
		if ev.Result != nil && out != nil {
			if err := json.Unmarshal(ev.Result, out); err != nil && ev.Error == nil {
				return err
			}
		}
		if ev.Error != nil {
			return codes.Decode(ev.Error)
		}
		return nil
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return ErrNoResult
}

// ReadReply reads a plain reply: out on 200, else the decoded error.
func ReadReply(resp *http.Response, codes Codes, out any) error {
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ev Event
		if json.Unmarshal(data, &ev) == nil && ev.Error != nil {
			return codes.Decode(ev.Error)
		}
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(data))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

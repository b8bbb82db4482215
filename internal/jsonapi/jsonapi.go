// Package jsonapi is the wire format hostd and coord share: JSON replies,
// errors as {"error":{"code","message"}} (the code maps back to a sentinel
// on the client), and long operations as NDJSON streams of progress lines
// ended by one line with the result, the error, or both (a failed job
// operation still reports what happened to each VM).
package jsonapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
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

// Codes maps sentinel errors to stable wire codes, in order (an error
// wrapping several sentinels maps to the first).
type Codes []struct {
	Code string
	Err  error
}

// Of returns err's code ("internal" for none).
func (c Codes) Of(err error) string {
	for _, x := range c {
		if errors.Is(err, x.Err) {
			return x.Code
		}
	}
	return "internal"
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

// WriteJSON writes v as the reply.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// WriteError writes an error reply.
func WriteError(w http.ResponseWriter, status int, code string, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(Event{Error: &Error{Code: code, Message: err.Error()}})
}

// Stream runs a long operation, sending its progress as NDJSON lines and
// its result (and error) as the last line. The operation does not end
// when the client goes away: a half-done operation is worse than an
// unread answer.
func Stream(w http.ResponseWriter, r *http.Request, code func(error) string, op func(ctx context.Context, progress func(any)) (any, error)) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	var mu sync.Mutex
	gone := false
	send := func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		if gone {
			return
		}
		if json.NewEncoder(w).Encode(ev) != nil {
			gone = true
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
	res, err := op(context.WithoutCancel(r.Context()), func(p any) {
		if data, err := json.Marshal(p); err == nil {
			send(Event{Progress: data})
		}
	})
	var ev Event
	if res != nil {
		if data, merr := json.Marshal(res); merr == nil && !bytes.Equal(data, []byte("null")) {
			ev.Result = data
		}
	}
	if err != nil {
		ev.Error = &Error{Code: code(err), Message: err.Error()}
	}
	if ev.Result == nil && ev.Error == nil {
		ev.Result = json.RawMessage("{}")
	}
	send(ev)
}

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

package jsonapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// maxBody bounds every request body: specs, jobs and options are small.
const maxBody = 4 << 20

// Handle registers pattern on mux: the request body (if any) decoded into
// a fresh In, then fn's reply or error written. fn's request outlives the
// client: a half-done operation is worse than an unread answer.
func Handle[In any](mux *http.ServeMux, codes Codes, pattern string, fn func(*http.Request, In) (any, error)) {
	handle(mux, codes, pattern, fn, WriteJSON)
}

// Op is a long operation: progress sends one progress line.
type Op func(progress func(any)) (any, error)

// HandleStream registers a long operation on mux: fn checks the request
// (its error is a plain error reply) and returns the operation, whose
// progress goes out as NDJSON lines and its result (and error) as the last
// one. Like Handle's, the operation goes on when the client goes away.
func HandleStream[In any](mux *http.ServeMux, codes Codes, pattern string, fn func(*http.Request, In) (Op, error)) {
	handle(mux, codes, pattern, fn, codes.stream)
}

func handle[In, Out any](mux *http.ServeMux, codes Codes, pattern string, fn func(*http.Request, In) (Out, error), reply func(http.ResponseWriter, Out)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		var in In
		err := ReadRequest(w, r, &in)
		var out Out
		if err == nil {
			out, err = fn(r.WithContext(context.WithoutCancel(r.Context())), in)
		}
		if err != nil {
			codes.WriteError(w, err)
			return
		}
		reply(w, out)
	})
}

// ReadRequest decodes r's JSON body into v: at most maxBody bytes, no
// unknown field (a typo must not be dropped silently); an empty body
// leaves v as it is. Its errors wrap ErrInvalid.
func ReadRequest(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err == nil && len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		err = dec.Decode(v)
	}
	if err != nil {
		return fmt.Errorf("request body: %w: %v", ErrInvalid, err)
	}
	return nil
}

// WriteJSON writes v as the reply.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// WriteError writes err as an error reply, with its code and status.
func (c Codes) WriteError(w http.ResponseWriter, err error) {
	code, status := c.lookup(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(Event{Error: &Error{Code: code, Message: err.Error()}})
}

// stream runs op, sending its progress as NDJSON lines and its result
// (and error) as the last line.
func (c Codes) stream(w http.ResponseWriter, op Op) {
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
	res, err := op(func(p any) {
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
		ev.Error = &Error{Code: c.Of(err), Message: err.Error()}
	}
	if ev.Result == nil && ev.Error == nil {
		ev.Result = json.RawMessage("{}")
	}
	send(ev)
}

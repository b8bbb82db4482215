package jsonapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

var errOwn = errors.New("own failure")

var testCodes = slices.Concat(Shared, Codes{{Code: "own", Err: errOwn, Status: http.StatusTeapot}})

type req struct {
	N int `json:"n"`
}

// One route table serves both a plain and a streamed route: a request is
// decoded strictly, a sentinel comes back as itself with its status, and
// a streamed operation's checks answer before the stream starts.
func TestHandleDecodesAndMapsErrors(t *testing.T) {
	mux := http.NewServeMux()
	Handle(mux, testCodes, "POST /plain", func(_ *http.Request, in req) (any, error) {
		switch in.N {
		case 1:
			return nil, fmt.Errorf("thing %d: %w", in.N, ErrNotFound)
		case 2:
			return nil, fmt.Errorf("thing %d: %w", in.N, errOwn)
		}
		return in, nil
	})
	HandleStream(mux, testCodes, "POST /stream", func(_ *http.Request, in req) (Op, error) {
		if in.N == 1 {
			return nil, fmt.Errorf("thing 1: %w", ErrBusy)
		}
		return func(progress func(any)) (any, error) {
			progress(in)
			return in, fmt.Errorf("half way: %w", errOwn)
		}, nil
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := NewClient("test", strings.TrimPrefix(srv.URL, "http://"), nil, testCodes)
	ctx := context.Background()

	var out req
	if err := c.Do(ctx, "POST", "/plain", req{N: 7}, &out); err != nil || out.N != 7 {
		t.Fatalf("plain: %v %+v", err, out)
	}
	for _, tc := range []struct {
		body   string
		want   error
		status int
	}{
		{`{"n":1}`, ErrNotFound, http.StatusNotFound},
		{`{"n":2}`, errOwn, http.StatusTeapot},
		{`{"typo":3}`, ErrInvalid, http.StatusBadRequest},
		{`{"n":`, ErrInvalid, http.StatusBadRequest},
	} {
		err := ErrInvalid // the client cannot send malformed JSON
		if json.Valid([]byte(tc.body)) {
			err = c.Do(ctx, "POST", "/plain", json.RawMessage(tc.body), nil)
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.body, err, tc.want)
		}
		resp, err := http.Post(srv.URL+"/plain", "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.body, resp.StatusCode, tc.status)
		}
	}
	if err := c.Stream(ctx, "/stream", req{N: 1}, nil, nil); !errors.Is(err, ErrBusy) {
		t.Errorf("stream refused before it starts: %v, want ErrBusy", err)
	}
	var lines int
	out = req{}
	err := c.Stream(ctx, "/stream", req{N: 5}, &out, func(json.RawMessage) { lines++ })
	if !errors.Is(err, errOwn) || out.N != 5 || lines != 1 {
		t.Errorf("stream: %v result %+v progress lines %d, want errOwn with the result and one line", err, out, lines)
	}
}

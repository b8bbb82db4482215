package coord

import (
	"context"
	"net/http"
	"net/url"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// opsRoutes: follow and cancel operations (symvirt ops). GET /v1/ops
// stays the raw journal.
func (c *Coord) opsRoutes(mux *http.ServeMux) {
	handle(mux, "GET /v1/operations", func(*http.Request, none) (any, error) { return c.OpViews() })
	handle(mux, "GET /v1/operations/{id}", func(r *http.Request, _ none) (any, error) { return c.OpView(r.PathValue("id")) })
	// The watch is a stream like an operation's own: views as progress
	// lines, the last view and the operation's error as its last line.
	jsonapi.HandleStream(mux, codes, "POST /v1/operations/{id}/watch", func(r *http.Request, _ none) (jsonapi.Op, error) {
		id := r.PathValue("id")
		if _, err := c.OpView(id); err != nil {
			return nil, err
		}
		return func(send func(any)) (any, error) {
			return c.WatchOp(r.Context(), id, func(v OpView) { send(v) })
		}, nil
	})
	handle(mux, "POST /v1/operations/{id}/cancel", func(r *http.Request, in struct {
		Reason string `json:"reason,omitempty"`
	}) (any, error) {
		return c.CancelOp(r.Context(), r.PathValue("id"), in.Reason)
	})
}

// Operations lists the running and the journaled operations.
func (c *Client) Operations(ctx context.Context) ([]OpView, error) {
	var v []OpView
	return v, c.Do(ctx, "GET", "/v1/operations", nil, &v)
}

// Operation shows one operation.
func (c *Client) Operation(ctx context.Context, id string) (OpView, error) {
	var v OpView
	return v, c.Do(ctx, "GET", "/v1/operations/"+url.PathEscape(id), nil, &v)
}

// WatchOperation follows an operation to its end: each new view goes to
// progress; the error is the operation's own.
func (c *Client) WatchOperation(ctx context.Context, id string, progress func(OpView)) (OpView, error) {
	var v OpView
	err := c.api.Stream(ctx, "/v1/operations/"+url.PathEscape(id)+"/watch", nil, &v, jsonapi.Progress(progress))
	return v, err
}

// CancelOperation cancels an operation and says what that led to.
func (c *Client) CancelOperation(ctx context.Context, id, reason string) (CancelReply, error) {
	var r CancelReply
	err := c.Do(ctx, "POST", "/v1/operations/"+url.PathEscape(id)+"/cancel", map[string]string{"reason": reason}, &r)
	return r, err
}

package coord

import (
	"context"
	"net/http"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// consolidateRoutes: the consolidation plan (a dry run) or its run,
// streamed like the operations it starts.
func (c *Coord) consolidateRoutes(mux *http.ServeMux) {
	jsonapi.HandleStream(mux, codes, "POST /v1/consolidate", func(r *http.Request, o ConsolidateOptions) (jsonapi.Op, error) {
		return func(send func(any)) (any, error) {
			rep, err := c.Consolidate(r.Context(), o, func(p Progress) { send(p) })
			return rep, refine(rep.Results, err)
		}, nil
	})
}

// Consolidate plans (o.Apply: and runs) a consolidation.
func (c *Client) Consolidate(ctx context.Context, o ConsolidateOptions, p ProgressFunc) (ConsolidateReport, error) {
	var rep ConsolidateReport
	err := c.Stream(ctx, "/v1/consolidate", o, &rep, p)
	return rep, err
}

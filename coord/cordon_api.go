package coord

import (
	"net/http"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// EvacuateOptions is the request of POST /v1/evacuate.
type EvacuateOptions struct {
	Hosts []string `json:"hosts"`
	Live  bool     `json:"live"`
}

// cordonRoutes: cordon and uncordon hosts; evacuate several (cordoning
// them).
func (c *Coord) cordonRoutes(mux *http.ServeMux) {
	handle(mux, "POST /v1/hosts/{name}/cordon", func(r *http.Request, o struct {
		Reason string `json:"reason"`
	}) (any, error) {
		return c.CordonHost(r.PathValue("name"), o.Reason)
	})
	handle(mux, "POST /v1/hosts/{name}/uncordon", func(r *http.Request, _ none) (any, error) {
		name := r.PathValue("name")
		return map[string]string{"uncordoned": name}, c.UncordonHost(name)
	})
	jsonapi.HandleStream(mux, codes, "POST /v1/evacuate", func(r *http.Request, o EvacuateOptions) (jsonapi.Op, error) {
		return func(send func(any)) (any, error) {
			res, err := c.Evacuate(r.Context(), o.Hosts, o.Live, func(p Progress) { send(p) })
			if res == nil {
				res = []machine.Result{} // a list, also when empty: the client decodes one
			}
			return res, refine(res, err)
		}, nil
	})
}

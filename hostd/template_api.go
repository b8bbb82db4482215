package hostd

import (
	"context"
	"net/http"
	"net/url"
)

// templateRoutes: templates and the clones started from them.
func (h *Host) templateRoutes(mux *http.ServeMux) {
	handle(mux, "GET /v1/templates", func(*http.Request, none) (any, error) { return h.Templates(), nil })
	handle(mux, "POST /v1/templates", func(r *http.Request, req struct {
		Name string `json:"name"`
		Spec Spec   `json:"spec"`
	}) (any, error) {
		return h.CreateTemplate(r.Context(), req.Name, req.Spec)
	})
	handle(mux, "DELETE /v1/templates/{name}", func(r *http.Request, _ none) (any, error) {
		name := r.PathValue("name")
		return map[string]string{"deleted": name}, h.DeleteTemplate(name)
	})
	handle(mux, "PUT /v1/templates/{name}/pool", func(r *http.Request, req struct {
		Size int `json:"size"`
	}) (any, error) {
		return map[string]int{"size": req.Size}, h.SetTemplatePool(r.PathValue("name"), req.Size)
	})
	handle(mux, "POST /v1/clones", func(r *http.Request, req CloneRequest) (any, error) {
		return h.Clone(r.Context(), req)
	})
}

// CreateTemplate boots spec and keeps it as template name.
func (c *Client) CreateTemplate(ctx context.Context, name string, spec Spec) (Template, error) {
	var t Template
	err := c.do(ctx, "POST", "/v1/templates", map[string]any{"name": name, "spec": spec}, &t)
	return t, err
}

// Templates lists the host's templates.
func (c *Client) Templates(ctx context.Context) ([]Template, error) {
	var out []Template
	err := c.do(ctx, "GET", "/v1/templates", nil, &out)
	return out, err
}

// DeleteTemplate removes a template.
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/templates/"+url.PathEscape(name), nil, nil)
}

// Clone starts a VM from a template and waits until its guestd took its
// new identity.
func (c *Client) Clone(ctx context.Context, req CloneRequest) (CloneResult, error) {
	var res CloneResult
	err := c.do(ctx, "POST", "/v1/clones", req, &res)
	return res, err
}

// SetTemplatePool sets how many standby clones of a template the host
// keeps ready (0: none).
func (c *Client) SetTemplatePool(ctx context.Context, name string, size int) error {
	return c.do(ctx, "PUT", "/v1/templates/"+url.PathEscape(name)+"/pool", map[string]int{"size": size}, nil)
}

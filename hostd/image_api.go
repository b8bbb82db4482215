package hostd

import (
	"context"
	"net/http"
	"net/url"
)

// imageRoutes: base images (seed, cache, copy) and the VMs booted on them.
func (h *Host) imageRoutes(mux *http.ServeMux) {
	handle(mux, "GET /v1/images", func(*http.Request, none) (any, error) { return h.Images(), nil })
	handle(mux, "POST /v1/images", func(r *http.Request, req RegisterImageRequest) (any, error) {
		return h.RegisterImage(r.Context(), req)
	})
	handle(mux, "POST /v1/images/{name}/attach", func(r *http.Request, req AttachImageRequest) (any, error) {
		return h.AttachImage(r.Context(), r.PathValue("name"), req)
	})
	handle(mux, "POST /v1/images/{name}/prefetch", func(r *http.Request, _ none) (any, error) {
		return h.PrefetchImage(r.Context(), r.PathValue("name"))
	})
	handle(mux, "DELETE /v1/images/{name}", func(r *http.Request, _ none) (any, error) {
		name := r.PathValue("name")
		return map[string]string{"deleted": name}, h.DeleteImage(name)
	})
	handle(mux, "POST /v1/images/{name}/vms", func(r *http.Request, req ImageVMRequest) (any, error) {
		return h.BootImageVM(r.Context(), r.PathValue("name"), req)
	})
	handle(mux, "POST /v1/templates/{name}/publish", func(r *http.Request, _ none) (any, error) {
		return h.PublishTemplate(r.Context(), r.PathValue("name"))
	})
	handle(mux, "POST /v1/templates/{name}/fetch", func(r *http.Request, req FetchTemplateRequest) (any, error) {
		return h.FetchTemplate(r.Context(), r.PathValue("name"), req)
	})
	mux.HandleFunc("GET /v1/templates/{name}/manifest", h.servePeerTemplate)
	mux.HandleFunc("GET /v1/images/{name}/manifest", h.servePeerImage)
	mux.HandleFunc("GET /v1/images/{name}/chunks/{chunk}", h.servePeerImage)
}

func imagePath(name, rest string) string { return "/v1/images/" + url.PathEscape(name) + rest }

// Images lists the host's images.
func (c *Client) Images(ctx context.Context) ([]ImageInfo, error) {
	var out []ImageInfo
	err := c.do(ctx, "GET", "/v1/images", nil, &out)
	return out, err
}

// RegisterImage makes the host an image's seed.
func (c *Client) RegisterImage(ctx context.Context, req RegisterImageRequest) (ImageInfo, error) {
	var out ImageInfo
	err := c.do(ctx, "POST", "/v1/images", req, &out)
	return out, err
}

// AttachImage opens an image on the host from its sources.
func (c *Client) AttachImage(ctx context.Context, name string, req AttachImageRequest) (ImageInfo, error) {
	var out ImageInfo
	err := c.do(ctx, "POST", imagePath(name, "/attach"), req, &out)
	return out, err
}

// PrefetchImage copies the whole image to the host.
func (c *Client) PrefetchImage(ctx context.Context, name string) (ImageInfo, error) {
	var out ImageInfo
	err := c.do(ctx, "POST", imagePath(name, "/prefetch"), nil, &out)
	return out, err
}

// PublishTemplate makes a template fetchable by peers (its files
// published as images) and returns its id.
func (c *Client) PublishTemplate(ctx context.Context, name string) (TemplatePublication, error) {
	var out TemplatePublication
	err := c.do(ctx, "POST", "/v1/templates/"+url.PathEscape(name)+"/publish", nil, &out)
	return out, err
}

// FetchTemplate has the host fetch a template from its sources.
func (c *Client) FetchTemplate(ctx context.Context, name string, req FetchTemplateRequest) (Template, error) {
	var out Template
	err := c.do(ctx, "POST", "/v1/templates/"+url.PathEscape(name)+"/fetch", req, &out)
	return out, err
}

// DeleteImage removes an image from the host.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", imagePath(name, ""), nil, nil)
}

// BootImageVM starts a VM on a qcow2 overlay of an image.
func (c *Client) BootImageVM(ctx context.Context, image string, req ImageVMRequest) (ImageVMResult, error) {
	var out ImageVMResult
	err := c.do(ctx, "POST", imagePath(image, "/vms"), req, &out)
	return out, err
}

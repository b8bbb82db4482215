package coord

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/jsonapi"
	"github.com/symvirt/symvirt/internal/names"
)

// Template is a template as the coordinator records it at its creation:
// its id, the sha256 of the manifest its host published (the root of
// trust every host that fetches it checks against: a host that holds
// another template under the name is neither a source nor a target of a
// boot of it), and the host it was made on.
type Template struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	Created time.Time `json:"created"`
}

// TemplateCreateRequest has Host (a host of the cluster) boot Spec and
// keep it as template Name.
type TemplateCreateRequest struct {
	Name string     `json:"name"`
	Host string     `json:"host"`
	Spec hostd.Spec `json:"spec"`
}

func (c *Coord) templateRoutes(mux *http.ServeMux) {
	jsonapi.Handle(mux, codes, "GET /v1/templates", func(*http.Request, struct{}) (any, error) { return c.Templates() })
	jsonapi.Handle(mux, codes, "POST /v1/templates", func(r *http.Request, req TemplateCreateRequest) (any, error) {
		return c.CreateTemplate(r.Context(), req)
	})
	jsonapi.Handle(mux, codes, "DELETE /v1/templates/{name}", func(r *http.Request, _ struct{}) (any, error) {
		name := r.PathValue("name")
		return map[string]string{"deleted": name}, c.RemoveTemplate(r.Context(), name)
	})
}

// Templates lists the recorded templates.
func (c *Coord) Templates() ([]Template, error) { return listAll[Template](c.store, bucketTemplates) }

func (c *Coord) template(name string) (Template, error) {
	var t Template
	if err := c.store.Get(bucketTemplates, name, &t); err != nil {
		return t, fmt.Errorf("template %q: %w", name, err)
	}
	return t, nil
}

// CreateTemplate has req.Host create the template (hostd publishes it
// as it is made) and records the id that host gives it. A name is one
// template: a second creation of it is refused until it is removed.
func (c *Coord) CreateTemplate(ctx context.Context, req TemplateCreateRequest) (Template, error) {
	if err := names.Check("template", req.Name); err != nil {
		return Template{}, fmt.Errorf("template: %w: %v", ErrInvalid, err)
	}
	h, err := c.host(req.Host)
	if err != nil {
		return Template{}, fmt.Errorf("host %q: %w", req.Host, err)
	}
	if err := c.claim("template:"+req.Name, "create"); err != nil {
		return Template{}, fmt.Errorf("template %q: %w", req.Name, err)
	}
	defer c.release("template:" + req.Name)
	if old, err := c.template(req.Name); err == nil {
		return Template{}, fmt.Errorf("template %q is recorded (id %s, made on %s): symvirt template rm it first: %w", req.Name, old.ID, old.Host, ErrExists)
	}
	t, err := c.client(h.Addr).CreateTemplate(ctx, req.Name, req.Spec)
	if err != nil {
		return Template{}, fmt.Errorf("template %q on %s: %w", req.Name, req.Host, err)
	}
	if t.ID == "" {
		return Template{}, fmt.Errorf("template %q on %s: the host gave it no id (a hostd that does not publish templates): %w", req.Name, req.Host, ErrInvalid)
	}
	rec := Template{Name: req.Name, ID: t.ID, Host: req.Host, Created: time.Now().UTC()}
	if err := c.store.Put(bucketTemplates, rec.Name, rec); err != nil {
		return Template{}, err
	}
	c.log.Info("template recorded", "template", rec.Name, "id", rec.ID, "host", rec.Host)
	return rec, nil
}

// RemoveTemplate removes the template from every host that holds it
// (with its recorded id: another template under the name is left alone)
// and forgets it.
func (c *Coord) RemoveTemplate(ctx context.Context, name string) error {
	rec, err := c.template(name)
	if err != nil {
		return err
	}
	hosts, err := c.Hosts()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hosts {
		ts, err := c.client(h.Addr).Templates(ctx)
		if err != nil {
			// Its copy, if any, is left: a template made again under
			// the name has another id, and boots refuse that host.
			c.log.Warn("template not removed from an unreachable host", "template", name, "host", h.Name, "err", err)
			continue
		}
		for _, t := range ts {
			if t.Name == name && t.ID == rec.ID {
				if err := c.client(h.Addr).DeleteTemplate(ctx, name); err != nil && !errors.Is(err, hostd.ErrNotFound) {
					errs = append(errs, fmt.Errorf("host %s: %w", h.Name, err))
				}
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("template %q: kept recorded, not removed everywhere: %w", name, errors.Join(errs...))
	}
	return c.store.Delete(bucketTemplates, name)
}

// Templates lists the templates the coordinator recorded.
func (cl *Client) Templates(ctx context.Context) ([]Template, error) {
	var out []Template
	err := cl.api.Do(ctx, "GET", "/v1/templates", nil, &out)
	return out, err
}

// CreateTemplate has a host create a template and records its id.
func (cl *Client) CreateTemplate(ctx context.Context, req TemplateCreateRequest) (Template, error) {
	var out Template
	err := cl.api.Do(ctx, "POST", "/v1/templates", req, &out)
	return out, err
}

// RemoveTemplate removes a template from every host and forgets it.
func (cl *Client) RemoveTemplate(ctx context.Context, name string) error {
	return cl.api.Do(ctx, "DELETE", "/v1/templates/"+url.PathEscape(name), nil, nil)
}

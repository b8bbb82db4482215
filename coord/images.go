package coord

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/jsonapi"
	"github.com/symvirt/symvirt/internal/names"
)

// Image is a base image registered for fan-out boots: its manifest's id
// (the root of trust every host checks chunks against) and the hosts
// that hold it whole, the first one the tree's root.
type Image struct {
	Name  string   `json:"name"`
	ID    string   `json:"id"`
	Size  int64    `json:"size"`
	Chunk int      `json:"chunk"`
	Seeds []string `json:"seeds"`
}

// ImageAddRequest registers an image file on a host (its seed); adding
// the same content on another host makes that host a replica.
type ImageAddRequest struct {
	Name  string `json:"name"`
	Host  string `json:"host"`
	Path  string `json:"path"`
	Chunk int    `json:"chunk,omitempty"`
}

func (c *Coord) imageRoutes(mux *http.ServeMux) {
	jsonapi.Handle(mux, codes, "GET /v1/images", func(*http.Request, struct{}) (any, error) { return c.Images() })
	jsonapi.Handle(mux, codes, "POST /v1/images", func(r *http.Request, req ImageAddRequest) (any, error) {
		return c.AddImage(r.Context(), req)
	})
	jsonapi.Handle(mux, codes, "DELETE /v1/images/{name}", func(r *http.Request, _ struct{}) (any, error) {
		name := r.PathValue("name")
		return map[string]string{"deleted": name}, c.RemoveImage(r.Context(), name)
	})
}

// Images lists the registered images.
func (c *Coord) Images() ([]Image, error) { return listAll[Image](c.store, bucketImages) }

func (c *Coord) image(name string) (Image, error) {
	var img Image
	if err := c.store.Get(bucketImages, name, &img); err != nil {
		return img, fmt.Errorf("image %q: %w", name, err)
	}
	return img, nil
}

// AddImage registers req's file on its host. A second host registering
// the same name must hold the same bytes (same id): it becomes a replica.
func (c *Coord) AddImage(ctx context.Context, req ImageAddRequest) (Image, error) {
	if err := names.Check("image", req.Name); err != nil {
		return Image{}, fmt.Errorf("image: %w: %v", ErrInvalid, err)
	}
	h, err := c.host(req.Host)
	if err != nil {
		return Image{}, fmt.Errorf("host %q: %w", req.Host, err)
	}
	old, oerr := c.image(req.Name)
	if oerr == nil && slices.Contains(old.Seeds, req.Host) {
		return old, nil
	}
	info, err := c.client(h.Addr).RegisterImage(ctx, hostd.RegisterImageRequest{Name: req.Name, Path: req.Path, Chunk: req.Chunk})
	if err != nil {
		return Image{}, fmt.Errorf("image %q on %s: %w", req.Name, req.Host, err)
	}
	img := Image{Name: req.Name, ID: info.ID, Size: info.Size, Chunk: info.Chunk}
	if oerr == nil {
		if old.ID != info.ID {
			c.client(h.Addr).DeleteImage(context.WithoutCancel(ctx), req.Name)
			return Image{}, fmt.Errorf("image %q on %s is not the registered one (id %s, want %s): %w", req.Name, req.Host, info.ID, old.ID, ErrInvalid)
		}
		img = old
	}
	img.Seeds = append(img.Seeds, req.Host)
	return img, c.store.Put(bucketImages, img.Name, img)
}

// RemoveImage forgets an image and drops it from every host that has it.
func (c *Coord) RemoveImage(ctx context.Context, name string) error {
	if _, err := c.image(name); err != nil {
		return err
	}
	hosts, err := c.Hosts()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hosts {
		if err := c.client(h.Addr).DeleteImage(ctx, name); err != nil && !errors.Is(err, hostd.ErrNotFound) {
			errs = append(errs, fmt.Errorf("host %s: %w", h.Name, err))
		}
	}
	if err := c.store.Delete(bucketImages, name); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Images lists the registered images.
func (cl *Client) Images(ctx context.Context) ([]Image, error) {
	var out []Image
	err := cl.api.Do(ctx, "GET", "/v1/images", nil, &out)
	return out, err
}

// AddImage registers an image file on a host.
func (cl *Client) AddImage(ctx context.Context, req ImageAddRequest) (Image, error) {
	var out Image
	err := cl.api.Do(ctx, "POST", "/v1/images", req, &out)
	return out, err
}

// RemoveImage forgets an image everywhere.
func (cl *Client) RemoveImage(ctx context.Context, name string) error {
	return cl.api.Do(ctx, "DELETE", "/v1/images/"+url.PathEscape(name), nil, nil)
}

package coord

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/names"
)

// ImageFanout shapes an image boot's fan-out tree.
type ImageFanout struct {
	// Degree: children per host (default 2); SeedDegree: the root's
	// (default 1, so the seed sends each block once).
	Degree     int `json:"degree,omitempty"`
	SeedDegree int `json:"seed_degree,omitempty"`
	// Copy copies the whole image to every host from the seed first (no
	// tree, no copy-on-read): the baseline fan-out is measured against.
	Copy bool `json:"copy,omitempty"`
}

// checkBootSource: a boot starts from a template, or from an image with a
// spec for its VMs.
func checkBootSource(req BootRequest) error {
	if req.Image == "" {
		return names.Check("template", req.Template)
	}
	if req.Template != "" || req.Spec == nil {
		return fmt.Errorf("an image boot takes a VM spec and no template")
	}
	return names.Check("image", req.Image)
}

// canBoot says why host cannot take the boot's VMs (nil: it can). Any
// host can take an image's: it fetches the blocks it reads.
func (c *Coord) canBoot(ctx context.Context, host string, req BootRequest) error {
	if req.Image == "" {
		return c.hasTemplate(ctx, host, req.Template)
	}
	if _, err := c.host(host); err != nil {
		return fmt.Errorf("host %q: %w", host, err)
	}
	return c.placeable("boot", host)
}

// bootVM starts one VM of the plan.
func (c *Coord) bootVM(ctx context.Context, req BootRequest, vm BootVM) BootedVM {
	if req.Image == "" {
		return c.clone(ctx, req.Template, vm)
	}
	b := BootedVM{Name: vm.Name, Host: vm.Host}
	h, err := c.host(vm.Host)
	if err == nil {
		spec := *req.Spec
		spec.Name = vm.Name
		var res hostd.ImageVMResult
		res, err = c.client(h.Addr).BootImageVM(ctx, req.Image, hostd.ImageVMRequest{Spec: spec})
		b.Ready = res.Ready
	}
	if err != nil {
		b.Error = err.Error()
	}
	return b
}

// prepareImage opens the image on every host of the plan, each with its
// sources in the fan-out tree (with Copy: the seeds only, and the whole
// image copied before any VM starts).
func (c *Coord) prepareImage(ctx context.Context, req BootRequest, plan []BootVM) error {
	if req.Image == "" {
		return nil
	}
	img, err := c.image(req.Image)
	if err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	used := planHosts(plan)
	f := req.Fanout
	if f.Copy {
		f.Degree, f.SeedDegree = len(used), len(used)
	}
	tree := FanoutTree(img.Seeds, used, f.Degree, cmp.Or(f.SeedDegree, 1))
	return fanLevels(tree, len(img.Seeds), func(host string) error {
		return c.attachImage(ctx, img, host, tree[host], f.Copy)
	})
}

// hostAddrs are the hostd addresses of hosts.
func (c *Coord) hostAddrs(hosts []string) ([]string, error) {
	var addrs []string
	for _, s := range hosts {
		sh, err := c.host(s)
		if err != nil {
			return nil, fmt.Errorf("source %q: %w", s, err)
		}
		addrs = append(addrs, sh.Addr)
	}
	return addrs, nil
}

// planHosts are the hosts a plan uses, in its order.
func planHosts(plan []BootVM) []string {
	var used []string
	for _, vm := range plan {
		if !slices.Contains(used, vm.Host) {
			used = append(used, vm.Host)
		}
	}
	return used
}

// fanLevels runs fn on the tree's hosts level by level, a level's hosts
// at once. Parents first: a child asks its parent for the manifest at
// once.
func fanLevels(tree map[string][]string, seeds int, fn func(host string) error) error {
	levels := map[int][]string{}
	for host, sources := range tree {
		depth := len(sources) - (seeds - 1)
		levels[depth] = append(levels[depth], host)
	}
	for depth := 1; len(levels[depth]) > 0; depth++ {
		var mu sync.Mutex
		var errs []error
		var wg sync.WaitGroup
		for _, host := range levels[depth] {
			wg.Go(func() {
				if err := fn(host); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	return nil
}

func (c *Coord) attachImage(ctx context.Context, img Image, host string, sources []string, copyAll bool) error {
	h, err := c.host(host)
	if err != nil {
		return fmt.Errorf("host %q: %w", host, err)
	}
	addrs, err := c.hostAddrs(sources)
	if err != nil {
		return fmt.Errorf("image %q: %w", img.Name, err)
	}
	cl := c.client(h.Addr)
	if _, err := cl.AttachImage(ctx, img.Name, hostd.AttachImageRequest{ID: img.ID, Sources: addrs}); err != nil {
		return fmt.Errorf("image %q on %s: %w", img.Name, host, err)
	}
	if copyAll {
		if _, err := cl.PrefetchImage(ctx, img.Name); err != nil {
			return fmt.Errorf("image %q on %s: %w", img.Name, host, err)
		}
	}
	return nil
}

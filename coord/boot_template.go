package coord

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/symvirt/symvirt/hostd"
)

// errLacksTemplate: the host is up but has no template of that name (a
// boot naming it in --hosts has the template fetched there).
var errLacksTemplate = fmt.Errorf("template not on the host: %w", ErrNotFound)

// templateScanTimeout bounds asking one host for its templates.
const templateScanTimeout = 10 * time.Second

// prepareTemplate brings the template to the plan's hosts that lack it,
// through the image fan-out: a host that has it publishes it (its RAM
// file and device state as images, listed in a manifest whose sha256 is
// the template's id), and every host lacking it fetches it from its
// sources in the tree (parent, grandparent, ... the root, then the other
// hosts that hold the same template), each checking every byte against
// that id before the template is recorded there.
func (c *Coord) prepareTemplate(ctx context.Context, req BootRequest, plan []BootVM) error {
	if req.Image != "" {
		return nil
	}
	holders, lack, err := c.templateHolders(ctx, req.Template, planHosts(plan))
	if err != nil || len(lack) == 0 {
		return err
	}
	if len(holders) == 0 {
		return fmt.Errorf("boot: no host has template %q to fetch it from (symvirt template create): %w", req.Template, ErrNotFound)
	}
	root := holders[0]
	h, err := c.host(root.host)
	if err != nil {
		return err
	}
	pub, err := c.client(h.Addr).PublishTemplate(ctx, req.Template)
	if err != nil {
		return fmt.Errorf("boot: publish template %q on %s: %w", req.Template, root.host, err)
	}
	seeds := []string{root.host}
	for _, o := range holders[1:] {
		if o.id == pub.ID {
			seeds = append(seeds, o.host)
		}
	}
	f := req.Fanout
	if f.Copy {
		f.Degree, f.SeedDegree = len(lack), len(lack)
	}
	tree := FanoutTree(seeds, lack, f.Degree, cmp.Or(f.SeedDegree, 1))
	return fanLevels(tree, len(seeds), func(host string) error {
		return c.fetchTemplate(ctx, req.Template, pub.ID, host, tree[host])
	})
}

type templateHolder struct{ host, id string }

// templateHolders are the hosts that have the template (the published
// ones first, the tree's root among them), and those of used that lack
// it. A host that does not answer holds nothing.
func (c *Coord) templateHolders(ctx context.Context, template string, used []string) (holders []templateHolder, lack []string, err error) {
	all, err := c.Hosts()
	if err != nil {
		return nil, nil, err
	}
	has := map[string]bool{}
	var unpublished []templateHolder
	for _, h := range all {
		sctx, cancel := context.WithTimeout(ctx, templateScanTimeout)
		ts, err := c.client(h.Addr).Templates(sctx)
		cancel()
		if err != nil {
			continue
		}
		for _, t := range ts {
			if t.Name != template {
				continue
			}
			has[h.Name] = true
			if t.ID != "" {
				holders = append(holders, templateHolder{h.Name, t.ID})
			} else {
				unpublished = append(unpublished, templateHolder{h.Name, ""})
			}
		}
	}
	for _, u := range used {
		if !has[u] {
			lack = append(lack, u)
		}
	}
	return append(holders, unpublished...), lack, nil
}

// fetchTemplate has host fetch the template from sources.
func (c *Coord) fetchTemplate(ctx context.Context, template, id, host string, sources []string) error {
	h, err := c.host(host)
	if err != nil {
		return fmt.Errorf("host %q: %w", host, err)
	}
	addrs, err := c.hostAddrs(sources)
	if err != nil {
		return fmt.Errorf("template %q: %w", template, err)
	}
	if _, err := c.client(h.Addr).FetchTemplate(ctx, template, hostd.FetchTemplateRequest{ID: id, Sources: addrs}); err != nil {
		return fmt.Errorf("template %q on %s: %w", template, host, err)
	}
	return nil
}

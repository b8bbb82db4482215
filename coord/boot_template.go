package coord

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/symvirt/symvirt/hostd"
)

// errLacksTemplate: the host is up but has no template of that name (a
// boot naming it in --hosts has the template fetched there).
var errLacksTemplate = fmt.Errorf("template not on the host: %w", ErrNotFound)

// templateScanTimeout bounds asking one host for its templates.
const templateScanTimeout = 10 * time.Second

// prepareTemplate brings the template to the plan's hosts that lack it,
// through the image fan-out: the hosts that hold it with the id the
// coordinator recorded at its creation (the sha256 of the manifest its
// host published) are the sources, and every host lacking it fetches it
// from its sources in the tree (parent, grandparent, ... the root, then
// the other holders), each checking every byte against that id before
// the template is recorded there. What a host says its template's id is
// decides nothing: a host holding another template under the name is
// not a source, and a boot that would start clones on it is refused.
func (c *Coord) prepareTemplate(ctx context.Context, req BootRequest, plan []BootVM) error {
	if req.Image != "" {
		return nil
	}
	rec, err := c.template(req.Template)
	recorded := err == nil
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	holders, lack, err := c.templateHolders(ctx, req.Template, planHosts(plan))
	if err != nil {
		return err
	}
	if recorded {
		if err := refuseForeign(rec, holders, planHosts(plan)); err != nil {
			return err
		}
	}
	if len(lack) == 0 {
		return nil
	}
	if !recorded {
		return fmt.Errorf("boot: template %q has no id recorded by the coordinator, so hosts that lack it cannot fetch it: "+
			"create it through the coordinator (symvirt template create --coord): %w", req.Template, ErrNotFound)
	}
	seeds := templateSeeds(rec, holders)
	if len(seeds) == 0 {
		return fmt.Errorf("boot: no host holds template %q with its recorded id %s: %w", req.Template, rec.ID, ErrNotFound)
	}
	if err := c.republish(ctx, rec, seeds[0]); err != nil {
		return err
	}
	f := req.Fanout
	if f.Copy {
		f.Degree, f.SeedDegree = len(lack), len(lack)
	}
	tree := FanoutTree(seeds, lack, f.Degree, cmp.Or(f.SeedDegree, 1))
	return fanLevels(tree, len(seeds), func(host string) error {
		return c.fetchTemplate(ctx, req.Template, rec.ID, host, tree[host])
	})
}

// refuseForeign refuses a boot that would start clones on a host of used
// holding another template (another id) under the recorded one's name.
func refuseForeign(rec Template, holders []templateHolder, used []string) error {
	for _, h := range holders {
		if h.id != rec.ID && slices.Contains(used, h.host) {
			return fmt.Errorf("boot: host %s holds a template %q with id %q, not the recorded %s: remove it there (symvirt template rm --host) or leave the host out of --hosts: %w",
				h.host, rec.Name, h.id, rec.ID, ErrInvalid)
		}
	}
	return nil
}

// templateSeeds are the hosts holding the template with its recorded
// id, the host it was made on first.
func templateSeeds(rec Template, holders []templateHolder) []string {
	var seeds []string
	for _, h := range holders {
		if h.id != rec.ID {
			continue
		}
		if h.host == rec.Host {
			seeds = append([]string{h.host}, seeds...)
		} else {
			seeds = append(seeds, h.host)
		}
	}
	return seeds
}

// republish has the tree's root serve the template (published at its
// creation; again if its images were removed since), and checks that it
// serves the recorded template.
func (c *Coord) republish(ctx context.Context, rec Template, root string) error {
	h, err := c.host(root)
	if err != nil {
		return fmt.Errorf("host %q: %w", root, err)
	}
	pub, err := c.client(h.Addr).PublishTemplate(ctx, rec.Name)
	if err != nil {
		return fmt.Errorf("boot: publish template %q on %s: %w", rec.Name, root, err)
	}
	if pub.ID != rec.ID {
		return fmt.Errorf("boot: %s publishes template %q as %s, not the recorded %s: %w", root, rec.Name, pub.ID, rec.ID, ErrInvalid)
	}
	return nil
}

type templateHolder struct{ host, id string }

// templateHolders are the hosts that have a template of that name, with
// the id each gives it, and those of used that lack one. A host that
// does not answer holds nothing.
func (c *Coord) templateHolders(ctx context.Context, template string, used []string) (holders []templateHolder, lack []string, err error) {
	all, err := c.Hosts()
	if err != nil {
		return nil, nil, err
	}
	has := map[string]bool{}
	for _, h := range all {
		sctx, cancel := context.WithTimeout(ctx, templateScanTimeout)
		ts, err := c.client(h.Addr).Templates(sctx)
		cancel()
		if err != nil {
			continue
		}
		for _, t := range ts {
			if t.Name == template {
				has[h.Name] = true
				holders = append(holders, templateHolder{h.Name, t.ID})
			}
		}
	}
	for _, u := range used {
		if !has[u] {
			lack = append(lack, u)
		}
	}
	return holders, lack, nil
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

package coord

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/jsonapi"
	"github.com/symvirt/symvirt/internal/names"
)

// MaxBootCount bounds one boot's VMs.
const MaxBootCount = 10000

// BootRequest asks for Count clones of a template, as a new job named Job
// (its VMs JOB-0 .. JOB-(Count-1)). Without Hosts, the hosts that have
// the template (and are not cordoned) are used; with Hosts, each of them,
// and those that lack the template fetch it first through a fan-out tree
// (Fanout) from a host that has it.
type BootRequest struct {
	Job      string   `json:"job"`
	Template string   `json:"template"`
	Count    int      `json:"count"`
	Hosts    []string `json:"hosts,omitempty"`
	// Parallel is how many clones each host starts at once (default 2).
	Parallel int `json:"parallel,omitempty"`
	// Image (instead of Template) boots each VM of Spec on a qcow2
	// overlay of a registered image, fetched through a fan-out tree.
	Image string      `json:"image,omitempty"`
	Spec  *hostd.Spec `json:"spec,omitempty"`
	// Fanout shapes the tree an image, or a template, reaches hosts by.
	Fanout ImageFanout `json:"fanout,omitempty"`
	// NetworkFence is the job's (Job.NetworkFence).
	NetworkFence string `json:"network_fence,omitempty"`
}

// BootProgress is sent as each VM is ready or has failed.
type BootProgress struct {
	Ready  int           `json:"ready"`
	Failed int           `json:"failed"`
	Count  int           `json:"count"`
	VM     string        `json:"vm"`
	Host   string        `json:"host"`
	Took   time.Duration `json:"ready_ns"`
	Error  string        `json:"error,omitempty"`
}

// BootedVM is one VM of a boot: its time from the request to guestd
// ready, as its host measured it.
type BootedVM struct {
	Name  string        `json:"name"`
	Host  string        `json:"host"`
	Ready time.Duration `json:"ready_ns"`
	// Since is from the boot's start to this VM ready (queueing included).
	Since time.Duration `json:"since_ns"`
	Error string        `json:"error,omitempty"`
}

// BootResult reports a boot.
type BootResult struct {
	Job      string        `json:"job"`
	Template string        `json:"template"`
	Count    int           `json:"count"`
	Ready    int           `json:"ready"`
	Took     time.Duration `json:"took_ns"`
	VMs      []BootedVM    `json:"vms"`
}

func (c *Coord) bootRoutes(mux *http.ServeMux) {
	jsonapi.HandleStream(mux, codes, "POST /v1/boot", func(r *http.Request, req BootRequest) (jsonapi.Op, error) {
		return func(send func(any)) (any, error) {
			return c.Boot(r.Context(), req, func(p BootProgress) { send(p) })
		}, nil
	})
}

// Boot places and starts the clones and records them as a job. Like a
// job's creation it is whole or nothing: if a clone fails, the others are
// stopped and removed and no job is recorded.
func (c *Coord) Boot(ctx context.Context, req BootRequest, progress func(BootProgress)) (BootResult, error) {
	start := time.Now()
	res := BootResult{Job: req.Job, Template: req.Template, Count: req.Count}
	if err := validBoot(req); err != nil {
		return res, err
	}
	if err := c.claim(req.Job, "boot"); err != nil {
		return res, err
	}
	defer c.release(req.Job)
	if _, err := c.Job(req.Job); err == nil {
		return res, fmt.Errorf("job %q: %w", req.Job, ErrExists)
	}
	hosts, err := c.bootHosts(ctx, req)
	if err != nil {
		return res, err
	}
	existing, max, err := c.hostLoad(hosts)
	if err != nil {
		return res, err
	}
	plan, err := placeBoot(req.Job, req.Count, hosts, existing, max)
	if err != nil {
		return res, err
	}
	if err := c.prepareImage(ctx, req, plan); err != nil {
		return res, err
	}
	if err := c.prepareTemplate(ctx, req, plan); err != nil {
		return res, err
	}
	res.VMs = c.runClones(ctx, req, plan, start, progress)
	res.Took = time.Since(start)
	var failed []error
	for _, vm := range res.VMs {
		if vm.Error != "" {
			failed = append(failed, fmt.Errorf("vm %s on %s: %s", vm.Name, vm.Host, vm.Error))
		} else {
			res.Ready++
		}
	}
	if len(failed) > 0 {
		c.undoBoot(ctx, res.VMs)
		return res, fmt.Errorf("boot %q: %d of %d clones failed; the others were removed: %w", req.Job, len(failed), req.Count, errors.Join(failed...))
	}
	j := Job{Name: req.Job, Created: time.Now().UTC(), NetworkFence: req.NetworkFence}
	for _, vm := range plan {
		j.VMs = append(j.VMs, JobVM{Name: vm.Name, Host: vm.Host})
	}
	if err := c.store.Put(bucketJobs, j.Name, j); err != nil {
		c.undoBoot(ctx, res.VMs) // VMs of a job the coordinator does not know would run unmanaged
		return res, fmt.Errorf("job %q: journal write failed: %w", j.Name, err)
	}
	return res, nil
}

func validBoot(req BootRequest) error {
	if err := names.Check("job", req.Job); err != nil {
		return fmt.Errorf("boot: %w: %v", ErrInvalid, err)
	}
	if err := checkBootSource(req); err != nil {
		return fmt.Errorf("boot: %w: %v", ErrInvalid, err)
	}
	if err := validFence("network_fence", req.NetworkFence); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	if req.Count < 1 || req.Count > MaxBootCount {
		return fmt.Errorf("boot: count %d is out of range 1..%d: %w", req.Count, MaxBootCount, ErrInvalid)
	}
	return nil
}

// bootHosts are the hosts a boot may use: those asked for (each must take
// VMs; one that lacks the template fetches it), or every host that has it
// and takes VMs.
func (c *Coord) bootHosts(ctx context.Context, req BootRequest) ([]string, error) {
	asked := req.Hosts
	if len(asked) == 0 {
		all, err := c.Hosts()
		if err != nil {
			return nil, err
		}
		for _, h := range all {
			asked = append(asked, h.Name)
		}
	}
	var out []string
	for _, name := range asked {
		err := c.canBoot(ctx, name, req)
		switch {
		case err == nil, len(req.Hosts) > 0 && errors.Is(err, errLacksTemplate):
			out = append(out, name)
		case len(req.Hosts) > 0:
			return nil, fmt.Errorf("boot: %w", err)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("boot: no host that takes VMs has template %q (symvirt template create --host ... on each): %w",
			req.Template, ErrNotFound)
	}
	return out, nil
}

// hasTemplate says why host cannot take clones of template (nil: it can).
func (c *Coord) hasTemplate(ctx context.Context, host, template string) error {
	h, err := c.host(host)
	if err != nil {
		return fmt.Errorf("host %q: %w", host, err)
	}
	if err := c.placeable("boot", host); err != nil {
		return err
	}
	ts, err := c.client(h.Addr).Templates(ctx)
	if err != nil {
		return fmt.Errorf("host %q: templates: %w", host, err)
	}
	rec, rerr := c.template(template) // recorded: only its id is the template
	if !slices.ContainsFunc(ts, func(t hostd.Template) bool { return t.Name == template && (rerr != nil || t.ID == rec.ID) }) {
		return fmt.Errorf("host %q has no template %q: create it there (symvirt template create) or name it in --hosts: %w", host, template, errLacksTemplate)
	}
	return nil
}

// hostLoad counts the job VMs on each host and gives each host's bound.
func (c *Coord) hostLoad(hosts []string) (existing, max map[string]int, err error) {
	existing, max = map[string]int{}, map[string]int{}
	jobs, err := c.Jobs()
	if err != nil {
		return nil, nil, err
	}
	for _, j := range jobs {
		for _, vm := range j.VMs {
			existing[vm.Host]++
		}
	}
	for _, name := range hosts {
		h, _ := c.host(name)
		max[name] = h.MaxVMs
	}
	return existing, max, nil
}

// runClones starts the plan's clones, Parallel at once on each host, and
// reports each as it ends.
func (c *Coord) runClones(ctx context.Context, req BootRequest, plan []BootVM, start time.Time, progress func(BootProgress)) []BootedVM {
	par := req.Parallel
	if par <= 0 {
		par = 2
	}
	sems := map[string]chan struct{}{}
	for _, vm := range plan {
		if sems[vm.Host] == nil {
			sems[vm.Host] = make(chan struct{}, par)
		}
	}
	out := make([]BootedVM, len(plan))
	var mu sync.Mutex
	p := BootProgress{Count: len(plan)}
	var wg sync.WaitGroup
	for i, vm := range plan {
		wg.Go(func() {
			sems[vm.Host] <- struct{}{}
			defer func() { <-sems[vm.Host] }()
			b := c.bootVM(ctx, req, vm)
			b.Since = time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			out[i] = b
			if b.Error != "" {
				p.Failed++
			} else {
				p.Ready++
			}
			p.VM, p.Host, p.Took, p.Error = b.Name, b.Host, b.Ready, b.Error
			if progress != nil {
				progress(p)
			}
		})
	}
	wg.Wait()
	return out
}

func (c *Coord) clone(ctx context.Context, template string, vm BootVM) BootedVM {
	b := BootedVM{Name: vm.Name, Host: vm.Host}
	h, err := c.host(vm.Host)
	if err == nil {
		var res hostd.CloneResult
		res, err = c.client(h.Addr).Clone(ctx, hostd.CloneRequest{Template: template, Name: vm.Name})
		b.Ready = res.Ready
	}
	if err != nil {
		b.Error = err.Error()
	}
	return b
}

// undoBoot removes the clones that started.
func (c *Coord) undoBoot(ctx context.Context, vms []BootedVM) {
	ctx = context.WithoutCancel(ctx)
	for _, vm := range vms {
		if vm.Error != "" {
			continue
		}
		if h, err := c.host(vm.Host); err == nil {
			cl := c.client(h.Addr)
			cl.Stop(ctx, vm.Name, time.Second)
			cl.Delete(ctx, vm.Name)
		}
	}
}

// Boot starts clones of a template as a new job, passing progress to fn.
func (cl *Client) Boot(ctx context.Context, req BootRequest, fn func(BootProgress)) (BootResult, error) {
	var res BootResult
	err := cl.api.Stream(ctx, "/v1/boot", req, &res, jsonapi.Progress(fn))
	return res, err
}

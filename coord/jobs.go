package coord

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/names"
)

// Host is a hostd the coordinator drives.
type Host struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // hostd API address (host:port, or a unix socket path)
	// MaxVMs bounds placement on restart/evacuate (0: no bound).
	MaxVMs int `json:"max_vms,omitempty"`
}

// JobVM is one VM of a job and where it runs.
type JobVM struct {
	Name string      `json:"name" yaml:"name"`
	Host string      `json:"host" yaml:"host"`
	Spec *hostd.Spec `json:"spec,omitempty" yaml:"spec,omitempty"`
	// AntiAffinity names a group whose VMs consolidate never puts on one
	// host (default: the job's).
	AntiAffinity string `json:"anti_affinity,omitempty" yaml:"anti_affinity,omitempty"`
}

// Job is a named set of VMs operated on together.
type Job struct {
	Name    string    `json:"name" yaml:"name"`
	VMs     []JobVM   `json:"vms" yaml:"vms"`
	Created time.Time `json:"created" yaml:"-"`
	// AntiAffinity is the group of every VM of the job that names none
	// (consolidate: the group's VMs stay on distinct hosts).
	AntiAffinity string `json:"anti_affinity,omitempty" yaml:"anti_affinity,omitempty"`
	// Template and Count ask for Count clones of a template instead of
	// listing VMs (see BootRequest); Hosts and Parallel are as for a boot.
	Template string   `json:"template,omitempty" yaml:"template,omitempty"`
	Count    int      `json:"count,omitempty" yaml:"count,omitempty"`
	Hosts    []string `json:"hosts,omitempty" yaml:"hosts,omitempty"`
	Parallel int      `json:"parallel,omitempty" yaml:"parallel,omitempty"`
	// NetworkFence scopes a live checkpoint's network fence: "all" (or
	// empty) holds all of each VM's traffic from its point until the job
	// resumes; "job" holds only the frames each VM receives from the
	// job's other VMs, until its own point (FenceJob: the VMs must share
	// one Ethernet segment).
	NetworkFence string `json:"network_fence,omitempty" yaml:"network_fence,omitempty"`
}

// AddHost registers (or updates) a hostd.
func (c *Coord) AddHost(h Host) error {
	if h.Name == "" || h.Addr == "" {
		return fmt.Errorf("host: name and addr are required: %w", ErrInvalid)
	}
	return c.store.Put(bucketHosts, h.Name, h)
}

// Hosts lists the hosts.
func (c *Coord) Hosts() ([]Host, error) { return listAll[Host](c.store, bucketHosts) }

func (c *Coord) host(name string) (Host, error) {
	var h Host
	err := c.store.Get(bucketHosts, name, &h)
	return h, err
}

func (c *Coord) hostMap() (map[string]string, error) {
	hosts, err := c.Hosts()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, h := range hosts {
		m[h.Name] = h.Addr
	}
	return m, nil
}

// CreateJob records a job; VMs with a spec are created and started on
// their hosts first (all or nothing).
func (c *Coord) CreateJob(ctx context.Context, j Job) (Job, error) {
	if j.Clones() {
		return c.createCloneJob(ctx, j)
	}
	if err := validateJob(j); err != nil {
		return j, err
	}
	var old Job
	if err := c.store.Get(bucketJobs, j.Name, &old); err == nil {
		return j, fmt.Errorf("job %q: %w", j.Name, ErrExists)
	}
	seen := map[string]bool{}
	for _, vm := range j.VMs {
		if seen[vm.Name] {
			return j, fmt.Errorf("job %q: vm %q listed twice: %w", j.Name, vm.Name, ErrInvalid)
		}
		seen[vm.Name] = true
		if _, err := c.host(vm.Host); err != nil {
			return j, fmt.Errorf("job %q vm %q: host: %w", j.Name, vm.Name, err)
		}
		if err := c.placeable(fmt.Sprintf("job %q vm %q", j.Name, vm.Name), vm.Host); err != nil {
			return j, err
		}
		if other, err := c.jobOf(vm.Name); err == nil {
			return j, fmt.Errorf("vm %q is already in job %q: %w", vm.Name, other.Name, ErrExists)
		}
	}
	var created []JobVM
	undo := func() {
		for _, done := range created {
			dh, _ := c.host(done.Host)
			cl := c.client(dh.Addr)
			cl.Stop(ctx, done.Name, time.Second)
			cl.Delete(ctx, done.Name)
		}
	}
	for _, vm := range j.VMs {
		if vm.Spec == nil {
			continue
		}
		h, _ := c.host(vm.Host)
		spec := *vm.Spec
		spec.Name = vm.Name
		if _, err := c.client(h.Addr).Create(ctx, spec, true); err != nil {
			undo()
			return j, fmt.Errorf("job %q: create vm %q on %s: %w", j.Name, vm.Name, vm.Host, err)
		}
		created = append(created, vm)
	}
	j.Created = time.Now().UTC()
	if err := c.store.Put(bucketJobs, j.Name, j); err != nil {
		undo() // VMs of a job the coordinator does not know would run unmanaged
		return j, fmt.Errorf("job %q: journal write failed: %w", j.Name, err)
	}
	return j, nil
}

// validateJob checks the names a job brings: they become directories under
// the checkpoint root and on the hosts.
func validateJob(j Job) error {
	if err := names.Check("name", j.Name); err != nil {
		return fmt.Errorf("job: %w: %v", ErrInvalid, err)
	}
	if err := validFence("network_fence", j.NetworkFence); err != nil {
		return fmt.Errorf("job %q: %w", j.Name, err)
	}
	if len(j.VMs) == 0 {
		return fmt.Errorf("job %q: field vms: at least one vm is required: %w", j.Name, ErrInvalid)
	}
	for i, vm := range j.VMs {
		if err := names.Check(fmt.Sprintf("vms[%d].name", i), vm.Name); err != nil {
			return fmt.Errorf("job %q: %w: %v", j.Name, ErrInvalid, err)
		}
	}
	return nil
}

// Jobs lists the jobs.
func (c *Coord) Jobs() ([]Job, error) { return listAll[Job](c.store, bucketJobs) }

// Job returns one job.
func (c *Coord) Job(name string) (Job, error) {
	var j Job
	err := c.store.Get(bucketJobs, name, &j)
	return j, err
}

func (c *Coord) jobOf(vm string) (Job, error) {
	jobs, err := c.Jobs()
	if err != nil {
		return Job{}, err
	}
	for _, j := range jobs {
		for _, v := range j.VMs {
			if v.Name == vm {
				return j, nil
			}
		}
	}
	return Job{}, fmt.Errorf("vm %q is in no job: %w", vm, ErrNotFound)
}

// hostLoad is a candidate host and how many VMs it runs.
type hostLoad struct {
	name  string
	vms   int
	limit int
}

// placement lists reachable hosts (neither excluded nor cordoned) with
// their load.
func (c *Coord) placement(ctx context.Context, exclude []string) (map[string]*hostLoad, error) {
	hosts, err := c.Hosts()
	if err != nil {
		return nil, err
	}
	if exclude, err = c.withCordoned(exclude); err != nil {
		return nil, err
	}
	out := map[string]*hostLoad{}
	for _, h := range hosts {
		if slices.Contains(exclude, h.Name) {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		vms, err := c.client(h.Addr).List(lctx)
		cancel()
		if err != nil {
			continue // unreachable: not a candidate
		}
		n := 0
		for _, v := range vms {
			if v.State != "stopped" {
				n++
			}
		}
		out[h.Name] = &hostLoad{name: h.Name, vms: n, limit: h.MaxVMs}
	}
	return out, nil
}

// pick chooses the least loaded host with room other than not.
func pick(load map[string]*hostLoad, not string) (string, error) {
	var best *hostLoad
	for _, l := range load {
		if l.name == not || (l.limit > 0 && l.vms >= l.limit) {
			continue
		}
		if best == nil || l.vms < best.vms || l.vms == best.vms && l.name < best.name {
			best = l
		}
	}
	if best == nil {
		return "", ErrNoCapacity
	}
	best.vms++
	return best.name, nil
}

package coord

import (
	"context"
	"fmt"
)

// Clones says whether the job asks for clones of a template (template:,
// count:) rather than listing its VMs.
func (j Job) Clones() bool {
	return j.Template != "" || j.Count != 0 || len(j.Hosts) > 0 || j.Parallel != 0
}

// BootRequest is the boot a job of clones asks for: its VMs are
// NAME-0 .. NAME-(count-1), placed by the coordinator as `symvirt boot`
// places them. A job must either list its VMs or give template and
// count, not both.
func (j Job) BootRequest() (BootRequest, error) {
	req := BootRequest{Job: j.Name, Template: j.Template, Count: j.Count, Hosts: j.Hosts, Parallel: j.Parallel,
		NetworkFence: j.NetworkFence}
	switch {
	case len(j.VMs) > 0:
		return req, fmt.Errorf("job %q: fields vms and template/count together: list the VMs or ask for count clones of a template, not both: %w",
			j.Name, ErrInvalid)
	case j.Template == "":
		return req, fmt.Errorf("job %q: field count needs field template (the template to clone): %w", j.Name, ErrInvalid)
	case j.Count < 1 || j.Count > MaxBootCount:
		return req, fmt.Errorf("job %q: field count %d is out of range 1..%d: %w", j.Name, j.Count, MaxBootCount, ErrInvalid)
	case j.Parallel < 0:
		return req, fmt.Errorf("job %q: field parallel %d is negative: %w", j.Name, j.Parallel, ErrInvalid)
	}
	return req, validBoot(req)
}

// createCloneJob boots the job's clones through Boot (whole or nothing)
// and returns the job it recorded.
func (c *Coord) createCloneJob(ctx context.Context, j Job) (Job, error) {
	req, err := j.BootRequest()
	if err != nil {
		return j, err
	}
	if _, err := c.Boot(ctx, req, nil); err != nil {
		return j, err
	}
	return c.Job(j.Name)
}

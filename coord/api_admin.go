package coord

import (
	"fmt"
	"net/http"
	"slices"
)

// adminRoutes: removing what an operator added (hosts, jobs).
func (c *Coord) adminRoutes(mux *http.ServeMux) {
	handle(mux, "DELETE /v1/hosts/{name}", func(r *http.Request, _ none) (any, error) {
		name := r.PathValue("name")
		return map[string]string{"removed": name}, c.RemoveHost(name)
	})
	handle(mux, "DELETE /v1/jobs/{name}", func(r *http.Request, _ none) (any, error) {
		name := r.PathValue("name")
		j, err := c.RemoveJob(name)
		return j, err
	})
}

// RemoveHost forgets a host. A host that still runs a VM of a job is
// refused: the job's operations would lose it (evacuate it first).
func (c *Coord) RemoveHost(name string) error {
	if _, err := c.host(name); err != nil {
		return err
	}
	jobs, err := c.Jobs()
	if err != nil {
		return err
	}
	for _, j := range jobs {
		if i := slices.IndexFunc(j.VMs, func(v JobVM) bool { return v.Host == name }); i >= 0 {
			return fmt.Errorf("host %s runs vm %s of job %s (evacuate it, or remove the job, first): %w",
				name, j.VMs[i].Name, j.Name, ErrBusy)
		}
	}
	if err := c.store.Delete(bucketCordons, name); err != nil {
		return err
	}
	return c.store.Delete(bucketHosts, name)
}

// RemoveJob forgets a job: its VMs keep running on their hosts and its
// checkpoints stay in the catalog. Refused while an operation holds it.
func (c *Coord) RemoveJob(name string) (Job, error) {
	j, err := c.Job(name)
	if err != nil {
		return j, err
	}
	if err := c.claim(name, "remove"); err != nil {
		return j, err
	}
	defer c.release(name)
	return j, c.store.Delete(bucketJobs, name)
}

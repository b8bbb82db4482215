package coord

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/url"
	"time"
)

// Status is the cluster as the hostds report it.
type Status struct {
	Hosts []HostStatus `json:"hosts"`
	Jobs  []JobStatus  `json:"jobs"`
}

// HostStatus is one host's reachability.
type HostStatus struct {
	Host
	Up    bool   `json:"up"`
	Error string `json:"error,omitempty"`
	VMs   int    `json:"vms"`
}

// JobStatus is one job's VMs and their state.
type JobStatus struct {
	Name      string            `json:"name"`
	Operation string            `json:"operation,omitempty"`
	VMs       map[string]string `json:"vms"` // vm -> "host: state"
}

// Status queries every hostd.
func (c *Coord) Status(ctx context.Context) (Status, error) {
	var st Status
	hosts, err := c.Hosts()
	if err != nil {
		return st, err
	}
	states := map[string]string{}
	for _, h := range hosts {
		hs := HostStatus{Host: h}
		lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		vms, err := c.client(h.Addr).List(lctx)
		cancel()
		if err != nil {
			hs.Error = hostError(err)
		} else {
			hs.Up = true
			for _, v := range vms {
				if v.State != "stopped" {
					hs.VMs++
				}
				states[h.Name+"/"+v.Name] = v.State
			}
		}
		st.Hosts = append(st.Hosts, hs)
	}
	jobs, err := c.Jobs()
	if err != nil {
		return st, err
	}
	c.mu.Lock()
	busy := maps.Clone(c.busy)
	c.mu.Unlock()
	for _, j := range jobs {
		js := JobStatus{Name: j.Name, Operation: busy[j.Name], VMs: map[string]string{}}
		for _, v := range j.VMs {
			s, ok := states[v.Host+"/"+v.Name]
			if !ok {
				s = "unknown"
			}
			js.VMs[v.Name] = v.Host + ": " + s
		}
		st.Jobs = append(st.Jobs, js)
	}
	return st, nil
}

// hostError is why a host did not answer, for an operator: the cause,
// not the internal HTTP request that met it.
func hostError(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return "unreachable: " + op.Err.Error()
	}
	if uerr := (*url.Error)(nil); errors.As(err, &uerr) {
		return uerr.Err.Error()
	}
	return err.Error()
}

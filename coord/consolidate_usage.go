package coord

import (
	"context"

	"github.com/symvirt/symvirt/hostd"
)

// HostUsage is a host's capacity and the sum of its VMs' usage over the
// hostds' window, as `symvirt hosts` shows it; Error says why a host did
// not answer.
type HostUsage struct {
	CPUCapacity float64 `json:"cpu_capacity"`
	MemCapacity int64   `json:"mem_capacity"`
	CPU         float64 `json:"cpu"`
	Mem         int64   `json:"mem"`
	VMs         int     `json:"vms"`
	Error       string  `json:"error,omitempty"`
}

// HostInfosWithUsage is HostInfos with each host's usage.
func (c *Coord) HostInfosWithUsage(ctx context.Context) ([]HostInfo, error) {
	infos, err := c.HostInfos()
	if err != nil {
		return nil, err
	}
	views := c.hostViews(ctx, hostsOf(infos))
	for i, hi := range infos {
		v := views[hi.Name]
		u := &HostUsage{CPUCapacity: v.info.Capacity.CPU, MemCapacity: v.info.Capacity.Mem}
		if v.err != nil {
			u.Error = v.err.Error()
		}
		for _, vm := range v.vms {
			if vm.State == "stopped" {
				continue
			}
			u.VMs++
			if vm.Usage != nil {
				u.CPU += vm.Usage.CPU
				u.Mem += vm.Usage.Mem
			} else {
				u.Mem += int64(vm.Spec.Memory) << 20
			}
		}
		infos[i].Usage = u
	}
	return infos, nil
}

func hostsOf(infos []HostInfo) []Host {
	out := make([]Host, len(infos))
	for i, hi := range infos {
		out[i] = hi.Host
	}
	return out
}

// JobInfosWithUsage is JobInfos with each running VM's usage.
func (c *Coord) JobInfosWithUsage(ctx context.Context) ([]JobInfo, error) {
	infos, err := c.JobInfos()
	if err != nil || len(infos) == 0 {
		return infos, err
	}
	hosts, err := c.Hosts()
	if err != nil {
		return nil, err
	}
	views := c.hostViews(ctx, hosts)
	for i, ji := range infos {
		for _, jv := range ji.VMs {
			vm, ok := views[jv.Host].vms[jv.Name]
			if !ok || vm.Usage == nil {
				continue
			}
			if infos[i].Usage == nil {
				infos[i].Usage = map[string]*hostd.VMUsage{}
			}
			infos[i].Usage[jv.Name] = vm.Usage
		}
	}
	return infos, nil
}

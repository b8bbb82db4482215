package hostd

import "github.com/prometheus/client_golang/prometheus"

// usageCollector exports the host's capacity and its VMs' usage, computed
// at scrape time.
type usageCollector struct {
	h                            *Host
	vmCPU, vmMem, capCPU, capMem *prometheus.Desc
}

func newUsageCollector(h *Host) *usageCollector {
	return &usageCollector{h: h,
		vmCPU: prometheus.NewDesc("symvirt_hostd_vm_cpu_cores",
			"CPU a VM's QEMU used over the usage window, in cores.", []string{"vm"}, nil),
		vmMem: prometheus.NewDesc("symvirt_hostd_vm_memory_used_bytes",
			"Memory a VM uses over the usage window (the guest's report, else its configured memory).", []string{"vm", "source"}, nil),
		capCPU: prometheus.NewDesc("symvirt_hostd_capacity_cpu_cores", "CPU this host offers its VMs, in cores.", nil, nil),
		capMem: prometheus.NewDesc("symvirt_hostd_capacity_memory_bytes", "Memory this host offers its VMs.", nil, nil),
	}
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.vmCPU
	ch <- c.vmMem
	ch <- c.capCPU
	ch <- c.capMem
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	capa := c.h.Capacity()
	ch <- prometheus.MustNewConstMetric(c.capCPU, prometheus.GaugeValue, capa.CPU)
	ch <- prometheus.MustNewConstMetric(c.capMem, prometheus.GaugeValue, float64(capa.Mem))
	c.h.mu.Lock()
	vms := make([]*VM, 0, len(c.h.vms))
	for _, vm := range c.h.vms {
		vms = append(vms, vm)
	}
	c.h.mu.Unlock()
	for _, vm := range vms {
		u := c.h.vmUsage(vm.name, vm.Spec().Memory)
		if u == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.vmCPU, prometheus.GaugeValue, u.CPU, vm.name)
		ch <- prometheus.MustNewConstMetric(c.vmMem, prometheus.GaugeValue, float64(u.Mem), vm.name, u.MemSource)
	}
}

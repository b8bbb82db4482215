package coord

import (
	"fmt"
	"sort"
)

// BootVM is one VM of a boot and where it goes.
type BootVM struct {
	Name string `json:"name"`
	Host string `json:"host"`
}

// placeBoot spreads count VMs named prefix-0..prefix-(count-1) over the
// hosts, each next VM on the host with the fewest (existing counts
// included, ties by the order given), at most max[host] on each (0: no
// bound). It fails when they do not fit.
func placeBoot(prefix string, count int, hosts []string, existing, max map[string]int) ([]BootVM, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("boot: no host to place %d VMs on: %w", count, ErrInvalid)
	}
	load := map[string]int{}
	for _, h := range hosts {
		load[h] = existing[h]
	}
	order := append([]string(nil), hosts...)
	out := make([]BootVM, 0, count)
	for i := range count {
		sort.SliceStable(order, func(a, b int) bool { return load[order[a]] < load[order[b]] })
		placed := false
		for _, h := range order {
			if m := max[h]; m > 0 && load[h] >= m {
				continue
			}
			out = append(out, BootVM{Name: fmt.Sprintf("%s-%d", prefix, i), Host: h})
			load[h]++
			placed = true
			break
		}
		if !placed {
			return nil, fmt.Errorf("boot: %d VMs do not fit on %v (max_vms): %w", count, hosts, ErrInvalid)
		}
	}
	return out, nil
}

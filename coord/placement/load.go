package placement

// Loads sums the usage of each host's VMs, by host name.
func Loads(vms []VM) map[string]Resources {
	out := map[string]Resources{}
	for _, v := range vms {
		l := out[v.Host]
		l.CPU += v.Use.CPU
		l.Mem += v.Use.Mem
		out[v.Host] = l
	}
	return out
}

// Fill is the fuller of a load's CPU and memory shares of h's capacity.
func (h Host) Fill(l Resources) float64 {
	return max(l.CPU/h.Capacity.CPU, float64(l.Mem)/float64(h.Capacity.Mem))
}

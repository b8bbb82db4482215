package coord

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/hostd/step"
)

// The scopes of a live checkpoint's network fence (Job.NetworkFence).
const (
	// FenceAll holds all of a VM's traffic from its snapshot point until
	// the job resumes: consistent whatever joins the job's VMs.
	FenceAll = "all"
	// FenceJob holds only the frames a VM receives from the job's other
	// VMs (by source MAC), from the fence step until its own point: peers
	// outside the job see only the VM's pause. Needs the job's VMs on one
	// Ethernet segment, each NIC with a MAC of its own.
	FenceJob = "job"
)

// fenceLookupTimeout bounds asking the hostds for the VMs' NICs.
const fenceLookupTimeout = 5 * time.Second

// validFence checks a network fence scope; field names it in the error.
func validFence(field, scope string) error {
	switch scope {
	case "", FenceAll, FenceJob:
		return nil
	}
	return fmt.Errorf("field %s: %q: want %s or %s: %w", field, scope, FenceAll, FenceJob, ErrInvalid)
}

// OpFence is a live checkpoint's network fence, resolved once when the
// operation starts and journaled with it, so that a coordinator taking
// over sends the same fence steps: a job-scoped fence on some VMs and a
// whole-VM one on others would not keep the cut consistent (the first
// holds what a VM receives, the second what it sends after its point).
type OpFence struct {
	Scope string `json:"scope"` // what the operation asked for: all | job
	// MACs are each VM's non-passthrough NICs' addresses (scope job, not
	// fallen back); each VM is fenced against the others'.
	MACs map[string][]string `json:"macs,omitempty"`
	// Fallback says why a job-scoped fence fell back to the whole VM's.
	Fallback string `json:"fallback,omitempty"`
}

// peers are the MACs vm's fence holds frames from: every other VM's.
// Nil: the whole VM is fenced.
func (f *OpFence) peers(vm string) *hostd.FenceArgs {
	if f == nil || f.Scope != FenceJob || f.Fallback != "" {
		return nil
	}
	var out []string
	for name, macs := range f.MACs {
		if name != vm {
			out = append(out, macs...)
		}
	}
	if len(out) == 0 {
		return nil // no other VM to hold frames from: hostd's empty list is the whole VM
	}
	sort.Strings(out)
	return &hostd.FenceArgs{Peers: out}
}

// fallbackNote is what a VM's result says when its fence was not the
// job-scoped one asked for.
func (f *OpFence) fallbackNote() string {
	if f == nil || f.Scope != FenceJob || f.Fallback == "" {
		return ""
	}
	return "network fence: the whole VM's, not the job's (" + f.Fallback + ")"
}

// resolveFence is the network fence of a live checkpoint of j's vms:
// scope job needs every VM's NIC addresses (the job's specs, else each
// VM's hostd); any that cannot be had makes it fall back to the whole-VM
// fence, with the reason.
func (c *Coord) resolveFence(ctx context.Context, j Job, vms []machine.VM, scope string) *OpFence {
	if scope == "" {
		scope = FenceAll
	}
	f := &OpFence{Scope: scope}
	if scope != FenceJob {
		return f
	}
	specs, err := c.vmSpecs(ctx, j, vms)
	if err == nil {
		f.MACs, err = jobMACs(specs)
	}
	if err != nil {
		f.Fallback = err.Error()
		c.log.Warn("job-scoped network fence not possible: the whole VMs are fenced", "job", j.Name, "reason", f.Fallback)
	}
	return f
}

// vmSpecs are the specs of vms: the job's where it has them, else each
// VM's hostd's (asked in parallel, under one deadline).
func (c *Coord) vmSpecs(ctx context.Context, j Job, vms []machine.VM) (map[string]hostd.Spec, error) {
	hosts, err := c.hostMap()
	if err != nil {
		return nil, fmt.Errorf("the hosts: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, fenceLookupTimeout)
	defer cancel()
	var mu sync.Mutex
	specs := map[string]hostd.Spec{}
	var errs []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, v := range vms {
		if i := slices.IndexFunc(j.VMs, func(jv JobVM) bool { return jv.Name == v.Name && jv.Spec != nil }); i >= 0 {
			specs[v.Name] = *j.VMs[i].Spec
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			info, err := c.client(hosts[v.Host]).Status(ctx, v.Name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("vm %s on %s: %v", v.Name, v.Host, err))
				return
			}
			specs[v.Name] = info.Spec
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		sort.Strings(errs)
		return nil, fmt.Errorf("no spec for %s", strings.Join(errs, "; "))
	}
	return specs, nil
}

// jobMACs lists each VM's non-passthrough NICs' MACs (passthrough NICs
// are detached before any point). Each must be given and the job's own:
// QEMU gives a NIC without one its default, the same in every VM.
func jobMACs(specs map[string]hostd.Spec) (map[string][]string, error) {
	out := map[string][]string{}
	owner := map[string]string{}
	names := make([]string, 0, len(specs))
	for name := range specs {
		names = append(names, name)
	}
	sort.Strings(names)
	total := 0
	for _, name := range names {
		for _, n := range specs[name].NICs {
			if n.Passthrough {
				continue
			}
			hw, err := net.ParseMAC(n.MAC)
			switch {
			case n.MAC == "":
				return nil, fmt.Errorf("vm %s nic %s has no mac", name, n.ID)
			case err != nil || len(hw) != 6:
				return nil, fmt.Errorf("vm %s nic %s: mac %q is not an Ethernet address", name, n.ID, n.MAC)
			}
			mac := hw.String()
			if prev, dup := owner[mac]; dup {
				return nil, fmt.Errorf("vm %s nic %s: mac %s is also %s's", name, n.ID, mac, prev)
			}
			owner[mac] = fmt.Sprintf("vm %s nic %s", name, n.ID)
			out[name] = append(out[name], mac)
			total++
		}
	}
	if total > step.MaxFencePeers {
		return nil, fmt.Errorf("%d NICs, more than a fence takes (%d)", total, step.MaxFencePeers)
	}
	return out, nil
}

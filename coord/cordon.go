package coord

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Cordon marks a host that takes no new VM: no restart, migration,
// evacuation or job creation places one there until it is uncordoned. The
// VMs it runs are left alone (evacuate moves them).
type Cordon struct {
	Host   string    `json:"host"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
}

// CordonHost cordons a known host (again: its reason is updated).
func (c *Coord) CordonHost(host, reason string) (Cordon, error) {
	if _, err := c.host(host); err != nil {
		return Cordon{}, err
	}
	var old Cordon
	if err := c.store.Get(bucketCordons, host, &old); err == nil {
		old.Reason = reason
		return old, c.store.Put(bucketCordons, host, old)
	}
	cd := Cordon{Host: host, Since: time.Now().UTC(), Reason: reason}
	return cd, c.store.Put(bucketCordons, host, cd)
}

// UncordonHost lets a known host take new VMs again.
func (c *Coord) UncordonHost(host string) error {
	if _, err := c.host(host); err != nil {
		return err
	}
	return c.store.Delete(bucketCordons, host)
}

// cordons returns the cordoned hosts by name.
func (c *Coord) cordons() (map[string]Cordon, error) {
	list, err := listAll[Cordon](c.store, bucketCordons)
	m := map[string]Cordon{}
	for _, cd := range list {
		m[cd.Host] = cd
	}
	return m, err
}

// placeable refuses a placement (of what: "vm NAME") on a cordoned host.
func (c *Coord) placeable(what, host string) error {
	var cd Cordon
	err := c.store.Get(bucketCordons, host, &cd)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return err
	}
	why := ""
	if cd.Reason != "" {
		why = ": " + cd.Reason
	}
	return fmt.Errorf("%s: host %s is cordoned (since %s%s): no new VM is placed there; "+
		"choose another host, or symvirt hosts uncordon %s: %w", what, host, cd.Since.Format(time.RFC3339),
		why, host, ErrCordoned)
}

// withCordoned adds the cordoned hosts to exclude.
func (c *Coord) withCordoned(exclude []string) ([]string, error) {
	cds, err := c.cordons()
	if err != nil {
		return nil, err
	}
	out := slices.Clone(exclude)
	for h := range cds {
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out, nil
}

// HostInfo is a host as `symvirt hosts` lists it.
type HostInfo struct {
	Host
	Cordoned *Cordon `json:"cordoned,omitempty"`
	// Usage is the host's capacity and what its VMs use (consolidate_usage.go).
	Usage *HostUsage `json:"usage,omitempty"`
}

// HostInfos lists the hosts with their cordon.
func (c *Coord) HostInfos() ([]HostInfo, error) {
	hosts, err := c.Hosts()
	if err != nil {
		return nil, err
	}
	cds, err := c.cordons()
	if err != nil {
		return nil, err
	}
	out := make([]HostInfo, 0, len(hosts))
	for _, h := range hosts {
		hi := HostInfo{Host: h}
		if cd, ok := cds[h.Name]; ok {
			hi.Cordoned = &cd
		}
		out = append(out, hi)
	}
	return out, nil
}

// cordonedNote names the cordoned hosts for a "no host with room" error.
func (c *Coord) cordonedNote() string {
	cds, err := c.cordons()
	if err != nil || len(cds) == 0 {
		return ""
	}
	names := slices.Sorted(maps.Keys(cds))
	return fmt.Sprintf(" (cordoned, so taking none: %s; symvirt hosts uncordon HOST)", strings.Join(names, ", "))
}

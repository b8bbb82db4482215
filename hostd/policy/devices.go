package policy

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/symvirt/symvirt/hostd/spec"
)

// What a spec's NICs and devices may name on the host: host hardware only
// from this host's pools, no host files, no backends hostd owns, tap names
// the policy allows, unprivileged forwarded ports.

// Drivers that attach host hardware (or host kernel devices): only from a
// pool, so the host's operator decides which hardware a VM gets.
var hostDriverRE = regexp.MustCompile(`^(vfio-|vhost-|usb-host$|u2f-passthru$|pci-assign$|kvm-pci-assign$|xen-pci-passthrough$)`)

// Device properties that name host resources. Hardware ones must come
// from the device's pool; files and descriptors are never a spec's to name;
// backends are hostd's own (disks, NICs, the guest channel, guest RAM).
var (
	hostHardwareProps = []string{"host", "sysfsdev", "hostbus", "hostaddr", "hostport", "hostdevice", "vendorid", "productid", "wwpn", "vhostdev"}
	hostFileProps     = []string{"romfile", "file", "kernel", "initrd", "fd", "fds", "vhostfd", "vhostfds", "configfd", "iommufd"}
	backendProps      = []string{"chardev", "drive", "netdev", "memdev", "fsdev", "rng", "audiodev", "tpmdev"}
)

// checkDevices checks NICs (tap names, hostfwd ports, models) and devices
// (drivers, properties) against the pools and the policy.
func (p *Policy) checkDevices(s spec.Spec, pools map[string][]map[string]string) error {
	for i, n := range s.NICs {
		f := fmt.Sprintf("nics[%d]", i)
		if err := checkHostDriver(f+".model", n.Model, n.Passthrough, n.Pool, pools); err != nil {
			return err
		}
		if err := p.checkTap(f+".tap", n.Tap); err != nil {
			return err
		}
		for j, fwd := range n.HostFwd {
			if err := checkHostFwd(fmt.Sprintf("%s.hostfwd[%d]", f, j), fwd); err != nil {
				return err
			}
		}
	}
	for i, d := range s.Devs {
		f := fmt.Sprintf("devices[%d]", i)
		if err := checkHostDriver(f+".driver", d.Driver, d.Passthrough, d.Pool, pools); err != nil {
			return err
		}
		if err := checkProps(f+".props", d, pools); err != nil {
			return err
		}
	}
	return nil
}

func checkHostDriver(field, driver string, passthrough bool, pool string, pools map[string][]map[string]string) error {
	if !hostDriverRE.MatchString(driver) {
		return nil
	}
	if !passthrough || pool == "" {
		return policyErr(field, "%s attaches host hardware: only as a passthrough device from one of this host's pools (passthrough: true, pool: NAME)", driver)
	}
	if len(pools[pool]) == 0 {
		return policyErr(field, "%s: pool %q is not configured on this host", driver, pool)
	}
	return nil
}

// checkProps refuses properties naming host files or hostd's backends, and
// host hardware that is not an entry of the device's pool. A pool entry
// overrides the spec's properties at launch; the check still refuses a
// value outside the pool, so a spec never names hardware the host did not
// give out.
func checkProps(field string, d spec.Dev, pools map[string][]map[string]string) error {
	keys := make([]string, 0, len(d.Props))
	for k := range d.Props {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v, f := d.Props[k], field+"."+k
		switch {
		case slices.Contains(hostFileProps, k) && v != "":
			return policyErr(f, "%q names a host file or descriptor; a spec may not", v)
		case slices.Contains(backendProps, k):
			return policyErr(f, "%q refers to a backend hostd owns; a spec may not", v)
		case slices.Contains(hostHardwareProps, k):
			if !d.Passthrough || d.Pool == "" {
				return policyErr(f, "%s names host hardware: only from one of this host's pools (passthrough: true, pool: NAME)", v)
			}
			if !slices.ContainsFunc(pools[d.Pool], func(e map[string]string) bool { return e[k] == v }) {
				return policyErr(f, "%s is not an entry of pool %q on this host", v, d.Pool)
			}
		}
	}
	return nil
}

// tapRE is a Linux interface name (IFNAMSIZ: at most 15 bytes).
var tapRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)

func (p *Policy) checkTap(field, tap string) error {
	if tap == "" {
		return nil
	}
	if !tapRE.MatchString(tap) {
		return spec.FieldErr(field, "%q is not an interface name (letters, digits, '_', '.', '-'; at most 15)", tap)
	}
	if len(p.TapNames) == 0 || slices.ContainsFunc(p.TapNames, func(pat string) bool {
		ok, _ := path.Match(pat, tap)
		return ok
	}) {
		return nil
	}
	return policyErr(field, "%s does not match the allowed tap names %v", tap, p.TapNames)
}

// checkHostFwd allows user-networking forwards of unprivileged host ports
// only: a spec must not take a system service's port (22, 443) on the
// host when it is free.
func checkHostFwd(field, fwd string) error {
	host, _, ok := strings.Cut(fwd, "-")
	parts := strings.Split(host, ":")
	if !ok || len(parts) != 3 || (parts[0] != "" && parts[0] != "tcp" && parts[0] != "udp") {
		return spec.FieldErr(field, "%q: want [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport", fwd)
	}
	port, err := strconv.Atoi(parts[2])
	if err != nil || port < 1 || port > 65535 {
		return spec.FieldErr(field, "%q: host port %q is not a port number", fwd, parts[2])
	}
	if port < 1024 {
		return policyErr(field, "%q: host port %d is privileged (below 1024)", fwd, port)
	}
	return nil
}

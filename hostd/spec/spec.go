package spec

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/symvirt/symvirt/internal/jsonapi"
	"github.com/symvirt/symvirt/internal/names"
	"go.yaml.in/yaml/v3"
)

// Spec describes one VM. It is what an operator writes (YAML) and what
// hostd persists and hands to another hostd on migration.
type Spec struct {
	Name   string `yaml:"name" json:"name"`
	Memory Size   `yaml:"memory" json:"memory"`
	VCPUs  int    `yaml:"vcpus,omitempty" json:"vcpus,omitempty"`
	CPU    string `yaml:"cpu,omitempty" json:"cpu,omitempty"`
	// Kernel/Initrd/Append boot a kernel directly; Disks may hold a root file
	// system instead or as well.
	Kernel string  `yaml:"kernel,omitempty" json:"kernel,omitempty"`
	Initrd string  `yaml:"initrd,omitempty" json:"initrd,omitempty"`
	Append string  `yaml:"append,omitempty" json:"append,omitempty"`
	Disks  []Disk  `yaml:"disks,omitempty" json:"disks,omitempty"`
	NICs   []NIC   `yaml:"nics,omitempty" json:"nics,omitempty"`
	Devs   []Dev   `yaml:"devices,omitempty" json:"devices,omitempty"`
	Guest  Channel `yaml:"guest_channel,omitempty" json:"guest_channel,omitempty"`
	// SharedMemory backs guest RAM with a file under /dev/shm that outlives
	// the QEMU process, so the VMM can be restarted with RAM in place
	// (warm reboot). Unset: hostd turns it on when /dev/shm has room.
	SharedMemory *bool `yaml:"shared_memory,omitempty" json:"shared_memory,omitempty"`
	// HugePages backs guest RAM with 2 MiB pages from a hugetlbfs mount
	// (shared as well, so warm reboot works). It cuts a live checkpoint's
	// snapshot point: write-protecting 2 GiB takes 1,024 page-table
	// entries instead of 524,288. Needs reserved pages (vm.nr_hugepages).
	HugePages bool `yaml:"hugepages,omitempty" json:"hugepages,omitempty"`
	// FreePageHints is refused (Validate): with virtio-balloon's free page
	// hints QEMU skips the pages the guest names free while it copies RAM,
	// but Linux's driver hands hinted pages back to its allocator under
	// memory pressure without waiting for QEMU to read the hint, so a page
	// back in use can be skipped and the guest corrupted. Kept as a field so
	// that a spec asking for it is told why, not that it is unknown.
	FreePageHints bool `yaml:"free_page_hints,omitempty" json:"free_page_hints,omitempty"`
}

// Size is a memory size in MiB; YAML accepts 512, "512M", "2G".
type Size int64

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("field memory (line %d): %w", n.Line, err)
	}
	*s = v
	return nil
}

// ParseSize parses a size in MiB ("256", "256M", "1G", "1GiB").
func ParseSize(orig string) (Size, error) {
	v := strings.TrimSpace(strings.ToUpper(orig))
	v = strings.TrimSuffix(strings.TrimSuffix(v, "IB"), "B")
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "G"):
		mult, v = 1024, strings.TrimSuffix(v, "G")
	case strings.HasSuffix(v, "M"):
		v = strings.TrimSuffix(v, "M")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of MiB such as 512, 512M or 2G", orig)
	}
	return Size(n * mult), nil
}

// Disk is a block device. A checkpoint cuts it at its snapshot point (a new
// qcow2 overlay becomes the active layer) and stores the frozen image, so a
// restore gets the disk as it was at the cut.
type Disk struct {
	ID     string `yaml:"id" json:"id"`
	Path   string `yaml:"path" json:"path"`
	Format string `yaml:"format,omitempty" json:"format,omitempty"`
}

// NIC is a network interface. Passthrough NICs (an SR-IOV VF in production,
// an emulated PCIe NIC in tests) sit on their own pcie-root-port so they can
// be hot-unplugged before a checkpoint or migration.
type NIC struct {
	ID          string   `yaml:"id" json:"id"`
	Model       string   `yaml:"model,omitempty" json:"model,omitempty"`
	MAC         string   `yaml:"mac,omitempty" json:"mac,omitempty"`
	Backend     string   `yaml:"backend,omitempty" json:"backend,omitempty"` // user | tap
	Tap         string   `yaml:"tap,omitempty" json:"tap,omitempty"`
	HostFwd     []string `yaml:"hostfwd,omitempty" json:"hostfwd,omitempty"`
	Passthrough bool     `yaml:"passthrough,omitempty" json:"passthrough,omitempty"`
	// Pool names the host's device pool this NIC is re-attached from on a
	// migration destination (its entries override properties such as mac).
	Pool string `yaml:"pool,omitempty" json:"pool,omitempty"`
}

// Dev is any other QEMU device, e.g. vfio-pci for an HCA.
type Dev struct {
	ID          string            `yaml:"id" json:"id"`
	Driver      string            `yaml:"driver" json:"driver"`
	Props       map[string]string `yaml:"props,omitempty" json:"props,omitempty"`
	Passthrough bool              `yaml:"passthrough,omitempty" json:"passthrough,omitempty"`
	Pool        string            `yaml:"pool,omitempty" json:"pool,omitempty"`
}

// Channel selects how hostd talks to guestd.
type Channel struct {
	Type string `yaml:"type,omitempty" json:"type,omitempty"` // none | virtio-serial | vsock
	CID  uint32 `yaml:"cid,omitempty" json:"cid,omitempty"`
}

var idRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_-]{0,30}$`)

// ParseSpec decodes YAML (or JSON, a YAML subset) and validates it.
// Unknown fields are errors: a typo must not silently drop a device.
func ParseSpec(data []byte) (Spec, error) {
	var s Spec
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return Spec{}, fmt.Errorf("%w: %v", jsonapi.ErrInvalid, err)
	}
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// LoadSpec reads and validates a spec file.
func LoadSpec(path string) (Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Spec{}, err
	}
	s, err := ParseSpec(data)
	if err != nil {
		return Spec{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// FieldErr is a spec error naming its field; it wraps jsonapi.ErrInvalid
// (hostd's ErrInvalidSpec).
func FieldErr(field, format string, a ...any) error {
	return fmt.Errorf("%w: field %s: %s", jsonapi.ErrInvalid, field, fmt.Sprintf(format, a...))
}

// Validate checks every field and names the first one that is wrong; it
// fills in the defaults.
func (s *Spec) Validate() error {
	if err := s.validateMachine(); err != nil {
		return err
	}
	ids := idSet{}
	for i := range s.Disks {
		if err := s.Disks[i].validate(fmt.Sprintf("disks[%d]", i), i, ids); err != nil {
			return err
		}
	}
	for i := range s.NICs {
		if err := s.NICs[i].validate(fmt.Sprintf("nics[%d]", i), ids); err != nil {
			return err
		}
	}
	for i := range s.Devs {
		if err := s.Devs[i].validate(fmt.Sprintf("devices[%d]", i), ids); err != nil {
			return err
		}
	}
	return s.Guest.validate()
}

func (s *Spec) validateMachine() error {
	if err := names.Check("name", s.Name); err != nil {
		return fmt.Errorf("%w: %w", jsonapi.ErrInvalid, err)
	}
	switch {
	case s.Memory <= 0:
		return FieldErr("memory", "missing (e.g. memory: 512M)")
	case s.HugePages && s.Memory%2 != 0:
		return FieldErr("memory", "%d MiB: with hugepages, a multiple of 2 MiB", s.Memory)
	case s.HugePages && s.SharedMemory != nil && !*s.SharedMemory:
		return FieldErr("shared_memory", "false, but hugepages are always a shared file")
	case s.FreePageHints:
		return FieldErr("free_page_hints", "not supported: the guest's balloon driver can reuse a page it hinted before QEMU reads the hint, and QEMU then skips a page in use (guest memory corrupted)")
	case s.VCPUs < 0 || s.VCPUs > 256:
		return FieldErr("vcpus", "%d is out of range 1..256", s.VCPUs)
	case s.Kernel == "" && len(s.Disks) == 0:
		return FieldErr("kernel", "missing: give a kernel or at least one disk")
	case s.Kernel == "" && (s.Initrd != "" || s.Append != ""):
		return FieldErr("kernel", "missing: initrd and append need a kernel")
	}
	s.VCPUs = max(s.VCPUs, 1)
	return nil
}

// idSet holds the device ids used so far, each with the field that uses it.
type idSet map[string]string

func (ids idSet) use(field, id string) error {
	if !idRE.MatchString(id) {
		return FieldErr(field, "%q: an id starts with a letter and has letters, digits, '_' or '-' (at most 31)", id)
	}
	if prev, dup := ids[id]; dup {
		return FieldErr(field, "id %q is already used by %s", id, prev)
	}
	ids[id] = field
	return nil
}

func (d *Disk) validate(f string, i int, ids idSet) error {
	if d.ID == "" {
		d.ID = fmt.Sprintf("disk%d", i)
	}
	if err := ids.use(f+".id", d.ID); err != nil {
		return err
	}
	if d.Path == "" {
		return FieldErr(f+".path", "missing")
	}
	if d.Format == "" {
		d.Format = "qcow2"
	}
	if d.Format != "qcow2" && d.Format != "raw" {
		return FieldErr(f+".format", "%q: want qcow2 or raw", d.Format)
	}
	return nil
}

func (n *NIC) validate(f string, ids idSet) error {
	if n.ID == "" {
		return FieldErr(f+".id", "missing")
	}
	if err := ids.use(f+".id", n.ID); err != nil {
		return err
	}
	if n.Model == "" {
		n.Model = "virtio-net-pci"
	}
	if _, err := net.ParseMAC(n.MAC); n.MAC != "" && err != nil {
		return FieldErr(f+".mac", "%q is not a MAC address", n.MAC)
	}
	switch {
	case n.Backend != "" && n.Backend != "user" && n.Backend != "tap":
		return FieldErr(f+".backend", "%q: want user or tap", n.Backend)
	case n.Backend != "tap" && n.Tap != "":
		return FieldErr(f+".tap", "only for backend: tap")
	case n.Backend == "tap" && n.Tap == "":
		return FieldErr(f+".tap", "missing: backend tap needs the tap interface name")
	case n.Backend == "tap" && len(n.HostFwd) > 0:
		return FieldErr(f+".hostfwd", "only for backend: user")
	case n.Pool != "" && !n.Passthrough:
		return FieldErr(f+".pool", "only passthrough devices come from a pool")
	}
	if n.Backend == "" {
		n.Backend = "user"
	}
	return nil
}

func (d *Dev) validate(f string, ids idSet) error {
	if d.ID == "" {
		return FieldErr(f+".id", "missing")
	}
	if err := ids.use(f+".id", d.ID); err != nil {
		return err
	}
	if d.Driver == "" {
		return FieldErr(f+".driver", "missing")
	}
	for k := range d.Props {
		if k == "id" || k == "driver" || k == "bus" || strings.ContainsAny(k, ",= ") {
			return FieldErr(f+".props", "property %q is not allowed", k)
		}
	}
	if d.Pool != "" && !d.Passthrough {
		return FieldErr(f+".pool", "only passthrough devices come from a pool")
	}
	return nil
}

func (c *Channel) validate() error {
	switch c.Type {
	case "", "none":
		c.Type = "none"
	case "virtio-serial":
	case "vsock":
		if c.CID < 3 {
			return FieldErr("guest_channel.cid", "vsock needs a guest cid >= 3")
		}
	default:
		return FieldErr("guest_channel.type", "%q: want none, virtio-serial or vsock", c.Type)
	}
	return nil
}

// PassthroughIDs lists the ids of every device that must be detached before
// a checkpoint or migration, in spec order.
func (s *Spec) PassthroughIDs() []string {
	var ids []string
	for _, n := range s.NICs {
		if n.Passthrough {
			ids = append(ids, n.ID)
		}
	}
	for _, d := range s.Devs {
		if d.Passthrough {
			ids = append(ids, d.ID)
		}
	}
	return ids
}

// UsesSharedMemory reports whether guest RAM lives in a shared file.
func (s *Spec) UsesSharedMemory() bool {
	return s.HugePages || (s.SharedMemory != nil && *s.SharedMemory)
}

// PoolOf returns the pool a device is drawn from on a destination ("" for
// none).
func (s *Spec) PoolOf(id string) string {
	for _, n := range s.NICs {
		if n.ID == id {
			return n.Pool
		}
	}
	for _, d := range s.Devs {
		if d.ID == id {
			return d.Pool
		}
	}
	return ""
}

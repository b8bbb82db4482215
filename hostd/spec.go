package hostd

import "github.com/symvirt/symvirt/hostd/spec"

// The VM spec lives in hostd/spec; these keep hostd's API as it was.
type (
	Spec    = spec.Spec
	Size    = spec.Size
	Disk    = spec.Disk
	NIC     = spec.NIC
	Dev     = spec.Dev
	Channel = spec.Channel
)

// ParseSpec decodes and validates a spec (spec.ParseSpec).
func ParseSpec(data []byte) (Spec, error) { return spec.ParseSpec(data) }

// LoadSpec reads and validates a spec file (spec.LoadSpec).
func LoadSpec(path string) (Spec, error) { return spec.LoadSpec(path) }

// ParseSize parses a size in MiB (spec.ParseSize).
func ParseSize(s string) (Size, error) { return spec.ParseSize(s) }

// fieldErr is a spec error naming its field (spec.FieldErr).
func fieldErr(field, format string, a ...any) error {
	return spec.FieldErr(field, format, a...)
}

package guestproto

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// TypeClone tells a guest that it is a clone of a template: its memory
// (kernel entropy pool, machine-id, hostname, MACs) is the template's, and
// every clone would otherwise share it. The guest reseeds its entropy pool
// with Seed, takes the identity given, runs its clone hooks and answers
// DONE, or REFUSED with why; only then does the host report it ready.
const TypeClone = "CLONE"

// Limits of a CLONE.
const (
	MinCloneSeed = 32 // bytes of host randomness, at least
	MaxCloneSeed = 512
	MaxCloneNICs = 8
	MaxHostname  = 64
)

// Clone is what a CLONE carries.
type Clone struct {
	// Seed is hex of MinCloneSeed..MaxCloneSeed random bytes from the host.
	Seed string `json:"seed"`
	// MachineID is the new /etc/machine-id: 32 lowercase hex digits.
	MachineID string `json:"machine_id"`
	Hostname  string `json:"hostname"`
	// NICs: each NIC with the template's MAC OldMAC takes MAC (and IP, an
	// address/prefix, if set).
	NICs []CloneNIC `json:"nics,omitempty"`
	// Standby: the clone waits in its host's pool of clones made ahead
	// of requests, and this identity is a placeholder: the guest takes it
	// (so its entropy and MACs are its own from the start, and the code
	// that takes an identity has run once) but runs no clone hooks; a
	// later CLONE, without Standby, gives it its own.
	Standby bool `json:"standby,omitempty"`
}

// CloneNIC is one NIC's new identity.
type CloneNIC struct {
	OldMAC string `json:"old_mac"`
	MAC    string `json:"mac"`
	IP     string `json:"ip,omitempty"`
}

// wireClone is Clone as decoded: NICs go into a fixed array one longer
// than allowed, as a PREPARE's devices do.
type wireClone struct {
	Seed      string                      `json:"seed"`
	MachineID string                      `json:"machine_id"`
	Hostname  string                      `json:"hostname"`
	NICs      [MaxCloneNICs + 1]*CloneNIC `json:"nics"`
	Standby   bool                        `json:"standby,omitempty"`
}

func (w *wireClone) clone() (*Clone, error) {
	if w == nil {
		return nil, nil
	}
	c := &Clone{Seed: w.Seed, MachineID: w.MachineID, Hostname: w.Hostname, Standby: w.Standby}
	for i, n := range w.NICs {
		switch {
		case n == nil:
			continue
		case i >= MaxCloneNICs:
			return nil, fmt.Errorf("%w: clone: more than %d nics", ErrMalformed, MaxCloneNICs)
		case i != len(c.NICs):
			return nil, fmt.Errorf("%w: clone: nics: holes", ErrMalformed)
		}
		c.NICs = append(c.NICs, *n)
	}
	return c, nil
}

// checkClone validates a CLONE's body.
func (m Message) checkClone() error {
	c := m.Clone
	if c == nil {
		return m.bad("no clone")
	}
	if m.HostTimeNS != 0 && (m.HostTimeNS < MinHostTimeNS || m.HostTimeNS > MaxHostTimeNS) {
		return m.bad("host_time_ns %d out of range", m.HostTimeNS)
	}
	if seed, err := hex.DecodeString(c.Seed); err != nil || len(seed) < MinCloneSeed || len(seed) > MaxCloneSeed {
		return m.bad("seed must be hex of %d..%d bytes", MinCloneSeed, MaxCloneSeed)
	}
	if !validMachineID(c.MachineID) {
		return m.bad("machine_id must be 32 lowercase hex digits")
	}
	if !ValidHostname(c.Hostname) {
		return m.bad("invalid hostname")
	}
	if len(c.NICs) > MaxCloneNICs {
		return m.bad("%d nics, at most %d", len(c.NICs), MaxCloneNICs)
	}
	for i, n := range c.NICs {
		if !validMAC(n.OldMAC) || !validMAC(n.MAC) {
			return m.bad("nic %d: invalid mac", i)
		}
		if n.IP != "" {
			if _, err := netip.ParsePrefix(n.IP); err != nil {
				return m.bad("nic %d: invalid ip", i)
			}
		}
	}
	return nil
}

func validMAC(s string) bool {
	hw, err := net.ParseMAC(s)
	return err == nil && len(hw) == 6
}

func validMachineID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidHostname: 1..MaxHostname bytes of dot-separated labels of
// [A-Za-z0-9-], none empty or starting or ending with '-'.
func ValidHostname(s string) bool {
	if len(s) == 0 || len(s) > MaxHostname {
		return false
	}
	label := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if label == 0 || s[i-1] == '-' || s[i-label] == '-' {
				return false
			}
			label = 0
			continue
		}
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
		label++
	}
	return true
}

// Clone sends CLONE and waits for DONE (nil), REFUSED (a *RefusedError) or
// the end of ctx or the channel. The host's wall clock goes with it: the
// clone's is the template's.
func (h *Host) Clone(ctx context.Context, id string, c Clone) error {
	if !h.handshaken.Load() {
		return fmt.Errorf("guestproto: clone %s: %w", id, ErrNoHandshake)
	}
	m := Message{V: Version, Type: TypeClone, ID: id, Clone: &c, HostTimeNS: h.cfg.now().UnixNano()}
	r, err := h.request(ctx, m, func(r Message) bool {
		return (r.Type == TypeDone || r.Type == TypeRefused) && r.ID == id
	})
	if err != nil {
		return fmt.Errorf("guestproto: clone %s: %w", id, err)
	}
	if r.Type == TypeRefused {
		return &RefusedError{ID: id, Reason: r.Reason}
	}
	return nil
}

// CloneTimeout bounds a guest's CLONE work: reseeding and renaming take
// milliseconds, the clone hooks a little longer.
const CloneTimeout = 30 * time.Second

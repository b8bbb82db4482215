package guestproto

// MaxMemBytes bounds a guest's memory report (1 TiB): a larger figure is a
// lie, refused as malformed.
const MaxMemBytes int64 = 1 << 40

// Usage is what a guest says it uses, carried by HELLO_ACK (optional: an
// older guest sends none, an older host ignores it). MemUsed is the guest
// kernel's MemTotal minus MemAvailable, in bytes. The guest is not trusted:
// the host bounds it by what it gave the VM.
type Usage struct {
	MemUsed  int64 `json:"mem_used,omitempty"`
	MemTotal int64 `json:"mem_total,omitempty"`
}

// checkUsage validates a HELLO_ACK's usage: both fields or neither, in
// range, used at most total.
func (m Message) checkUsage() error {
	u := m.Usage
	switch {
	case u == Usage{}:
		return nil
	case u.MemTotal <= 0 || u.MemTotal > MaxMemBytes:
		return m.bad("mem_total %d out of range", u.MemTotal)
	case u.MemUsed < 0 || u.MemUsed > u.MemTotal:
		return m.bad("mem_used %d out of range (mem_total %d)", u.MemUsed, u.MemTotal)
	}
	return nil
}

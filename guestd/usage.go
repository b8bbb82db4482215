package guestd

import (
	"os"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/internal/meminfo"
)

// meminfoPath is read for the memory report.
const meminfoPath = "/proc/meminfo"

// memUsage is the memory this guest uses (MemTotal - MemAvailable), for
// the HELLO_ACK; zero (no report) when the kernel does not say.
func memUsage() guestproto.Usage {
	data, err := os.ReadFile(meminfoPath)
	if err != nil {
		return guestproto.Usage{}
	}
	return parseMeminfo(data)
}

// parseMeminfo makes a valid report of /proc/meminfo's text, or none.
func parseMeminfo(data []byte) guestproto.Usage {
	in := meminfo.Parse(data)
	if in.MemTotal <= 0 || in.MemAvailable < 0 || in.MemAvailable > in.MemTotal || in.MemTotal > guestproto.MaxMemBytes {
		return guestproto.Usage{}
	}
	return guestproto.Usage{MemUsed: in.MemTotal - in.MemAvailable, MemTotal: in.MemTotal}
}

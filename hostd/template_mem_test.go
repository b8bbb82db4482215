package hostd_test

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// memParts is one QEMU's proportional set size by what its mappings hold,
// from /proc/PID/smaps: guest RAM (the template file mapped private, or
// the anonymous RAM of a VM without one), TCG's translation buffer (the
// one anonymous rwx mapping), the heap, other anonymous mappings (thread
// stacks, QEMU's other allocations) and files (libraries, QEMU itself).
type memParts map[string]int64

// Parts of memParts.
const (
	partGuest  = "guest RAM"
	partGuestW = "guest RAM written (anonymous)"
	partTCG    = "TCG translation buffer"
	partHeap   = "heap"
	partAnon   = "other anonymous"
	partFiles  = "files (libraries)"
)

// readMemParts sums smaps by part; ramFile is the template's RAM file
// ("" for a VM without one: its largest anonymous mapping of at least
// guestMiB is its RAM).
func readMemParts(t *testing.T, pid int, ramFile string, guestMiB int) memParts {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	parts := memParts{}
	var part string
	for _, l := range strings.Split(string(data), "\n") {
		fl := strings.Fields(l)
		if len(fl) >= 5 && strings.Contains(fl[0], "-") && !strings.HasSuffix(fl[0], ":") {
			part = mappingPart(fl, ramFile, guestMiB)
			continue
		}
		if len(fl) != 3 {
			continue
		}
		kb, _ := strconv.ParseInt(fl[1], 10, 64)
		switch {
		case fl[0] == "Pss:":
			parts[part] += kb << 10
		case fl[0] == "Anonymous:" && part == partGuest:
			parts[partGuestW] += kb << 10
		}
	}
	return parts
}

func mappingPart(fl []string, ramFile string, guestMiB int) string {
	path := ""
	if len(fl) >= 6 {
		path = fl[5]
	}
	var lo, hi uint64
	fmt.Sscanf(fl[0], "%x-%x", &lo, &hi)
	switch {
	case ramFile != "" && path == ramFile:
		return partGuest
	case path == "" && fl[1] == "rwxp":
		return partTCG
	case ramFile == "" && path == "" && hi-lo >= uint64(guestMiB)<<20:
		return partGuest
	case path == "[heap]":
		return partHeap
	case path == "" || strings.HasPrefix(path, "["):
		return partAnon
	}
	return partFiles
}

func (p memParts) add(o memParts) {
	for k, v := range o {
		p[k] += v
	}
}

func (p memParts) String() string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %s; ", k, mib(p[k]))
	}
	return strings.TrimSuffix(b.String(), "; ")
}

// bigMappings lists a process's mappings of more than 512 KiB of PSS
// that are not guest RAM (where QEMU's own memory is).
func bigMappings(t *testing.T, pid int, ramFile string) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	var head string
	for _, l := range strings.Split(string(data), "\n") {
		fl := strings.Fields(l)
		if len(fl) >= 5 && strings.Contains(fl[0], "-") && !strings.HasSuffix(fl[0], ":") {
			head = l
			continue
		}
		if len(fl) == 3 && fl[0] == "Pss:" {
			kb, _ := strconv.ParseInt(fl[1], 10, 64)
			if kb > 512 && !strings.Contains(head, ramFile) {
				var lo, hi uint64
				fmt.Sscanf(head, "%x-%x", &lo, &hi)
				fmt.Fprintf(&b, "\n    %s size %d KiB pss %d KiB", head, (hi-lo)>>10, kb)
			}
		}
	}
	return b.String()
}

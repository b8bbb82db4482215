// Package meminfo reads Linux's /proc/meminfo.
package meminfo

import (
	"bufio"
	"bytes"
	"strconv"
)

// Info is what the kernel says of memory, in bytes; -1 where it says
// nothing.
type Info struct {
	MemTotal, MemAvailable int64
}

// Parse reads MemTotal and MemAvailable (given in kB) from /proc/meminfo's
// text; anything it cannot read is left at -1.
func Parse(data []byte) Info {
	in := Info{MemTotal: -1, MemAvailable: -1}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseInt(string(f[1]), 10, 64)
		if err != nil || n < 0 || n > 1<<50 {
			continue
		}
		switch string(f[0]) {
		case "MemTotal:":
			in.MemTotal = n << 10
		case "MemAvailable:":
			in.MemAvailable = n << 10
		}
	}
	return in
}

// Package mountinfo reads /proc/PID/mountinfo: each mount's root, mount
// point, file system type and super block options, escapes undone.
package mountinfo

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

// Mount is one line of mountinfo.
type Mount struct {
	Root, Point, FSType, Source string
	Super                       []string // super block options
}

// Read calls each for every well-formed line of r, in order, until each
// returns false; lines are at most 1 MiB.
func Read(r io.Reader, each func(Mount) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		m := Mount{Root: Unescape(f[3]), Point: Unescape(f[4]), FSType: g[0], Source: Unescape(g[1]), Super: strings.Split(g[2], ",")}
		if !each(m) {
			break
		}
	}
	return sc.Err()
}

// Option is the value of the super block option name= ("" and false if
// the mount has none).
func (m Mount) Option(name string) (string, bool) {
	for _, o := range m.Super {
		if v, ok := strings.CutPrefix(o, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// Unescape undoes mountinfo's octal escapes of a path (\040 for a space,
// \011, \012, \134).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

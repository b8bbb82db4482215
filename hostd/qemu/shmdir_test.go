package qemu

import (
	"strings"
	"testing"
)

const mountinfoText = `22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
26 22 0:23 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw,inode64
40 22 0:40 / /srv/guest\040ram rw,relatime shared:20 - tmpfs tmpfs rw,size=8388608k,huge=within_size,inode64
41 40 0:41 / /srv/guest\040ram/inner rw,relatime shared:21 - tmpfs tmpfs rw,huge=always
42 26 0:42 / /dev/shm rw,relatime shared:22 - tmpfs tmpfs rw,huge=advise
`

// The huge= option is the one of the mount holding the directory: the
// longest mount point above it, the last of two on one point.
func TestHugeOption(t *testing.T) {
	for dir, want := range map[string]string{
		"/srv/guest ram":           "within_size",
		"/srv/guest ram/symvirt-1": "within_size",
		"/srv/guest ram/inner/x":   "always",
		"/srv/guest ramx":          "never", // not below the mount: / (ext4, no huge=)
		"/dev/shm/symvirt-1":       "advise",
	} {
		got, err := hugeOption(strings.NewReader(mountinfoText), dir)
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", dir, got, err, want)
		}
	}
	if _, err := hugeOption(strings.NewReader(""), "/x"); err == nil {
		t.Error("no mount at all: no error")
	}
}

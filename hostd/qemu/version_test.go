package qemu

import (
	"errors"
	"strings"
	"testing"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/symvirt/symvirt/hostd/sentinel"
)

func TestParseVersion(t *testing.T) {
	for _, c := range []struct{ out, want, pkg string }{
		{"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright", "7.2.22", "Debian 1:7.2+dfsg-7+deb12u18+b3"},
		{"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n", "10.0.2", "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"},
		{"QEMU emulator version 9.1.0\n", "9.1.0", ""},
	} {
		v, err := ParseVersion(c.out)
		if err != nil || v.String() != c.want || v.Package != c.pkg {
			t.Errorf("ParseVersion(%q) = %v %q, %v; want %s %q", c.out, v, v.Package, err, c.want, c.pkg)
		}
	}
	if _, err := ParseVersion("qemu-img version 7.2.0"); err == nil {
		t.Error("ParseVersion accepted a line that is not QEMU's")
	}
}

func TestCheckVersion(t *testing.T) {
	ver := func(major, minor int) goqmp.Version {
		var v goqmp.Version
		v.QEMU.Major, v.QEMU.Minor = major, minor
		return v
	}
	for _, ok := range []goqmp.Version{ver(7, 2), ver(7, 3), ver(8, 0), ver(10, 0)} {
		if err := CheckVersion("q", ok); err != nil {
			t.Errorf("CheckVersion(%s) = %v", ok, err)
		}
	}
	for _, old := range []goqmp.Version{ver(7, 1), ver(6, 2), ver(0, 0)} {
		err := CheckVersion("/usr/bin/old-qemu", old)
		if !errors.Is(err, sentinel.ErrQEMUStart) || !strings.Contains(err.Error(), "/usr/bin/old-qemu is QEMU "+old.String()+", older than 7.2") {
			t.Errorf("CheckVersion(%s) = %v", old, err)
		}
	}
}

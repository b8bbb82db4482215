package names

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, ok := range []string{"j1", "mpi-job", "vm.1", "A_b-9", strings.Repeat("a", 63)} {
		if err := Check("name", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "../x", "../../etc", "a/b", ".hidden", "-x", "a..b", "x\x00", strings.Repeat("a", 64), "vm 1"} {
		err := Check("vms[0].name", bad)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "field vms[0].name") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestJoinStaysInside(t *testing.T) {
	if d, err := Join("/ck/", "j1-20260101-000000-abcd", "vm1"); err != nil || d != "/ck/j1-20260101-000000-abcd/vm1" {
		t.Fatalf("%q %v", d, err)
	}
	for _, parts := range [][]string{{"..", "x"}, {"../x-1", "vm"}, {"a", "../../etc"}, {"a/b"}, {"."}, {""}} {
		if d, err := Join("/ck", parts...); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %q %v", parts, d, err)
		}
	}
}

package hostd_test

import (
	"bytes"
	"fmt"
	"os"
	"testing"
)

// cloneHoldsNoKernel: a clone's QEMU was not given the guest's kernel or
// initrd, which QEMU would keep a copy of (fw_cfg) for a boot a clone
// never makes: no -initrd, and a -kernel of at most 4 KiB (the
// placeholder).
func cloneHoldsNoKernel(t *testing.T, pid int) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	args := bytes.Split(data, []byte{0})
	for i := 0; i+1 < len(args); i++ {
		switch string(args[i]) {
		case "-initrd":
			t.Errorf("clone QEMU pid %d was given an initrd: %s", pid, args[i+1])
		case "-kernel":
			if st, err := os.Stat(string(args[i+1])); err != nil || st.Size() > 4096 {
				t.Errorf("clone QEMU pid %d was given kernel %s (%v), not the placeholder", pid, args[i+1], err)
			}
		}
	}
}

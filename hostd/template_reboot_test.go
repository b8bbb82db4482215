package hostd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/guestproto"
)

// TestCloneIdentityKeptForReboot: what a clone's guestd is given again
// after its guest rebooted is the identity it took (hostname,
// machine-id, MACs, addresses), its NICs found by the clone's MAC (which
// the spec gives a booted guest), and new entropy; nothing for a VM that
// is not a clone.
func TestCloneIdentityKeptForReboot(t *testing.T) {
	vm := &VM{name: "c0", dir: t.TempDir()}
	if _, ok := vm.cloneIdentity(); ok {
		t.Fatal("a VM that is not a clone has a clone identity")
	}
	nics := []guestproto.CloneNIC{{OldMAC: "52:54:00:00:00:01", MAC: "52:54:00:aa:bb:cc", IP: "10.0.0.5/24"}}
	given := newCloneIdentity("c0", nics)
	given.Standby = true
	if err := vm.saveCloneIdentity(given); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(vm.dir, fileCloneIdentity))
	if strings.Contains(string(data), given.Seed) {
		t.Errorf("the recorded identity holds the seed, used once: %s", data)
	}
	again, ok := vm.cloneIdentity()
	if !ok {
		t.Fatal("no clone identity recorded")
	}
	if again.Hostname != "c0" || again.MachineID != given.MachineID || again.Standby {
		t.Errorf("identity again: %+v; given %+v", again, given)
	}
	if len(again.NICs) != 1 || again.NICs[0].OldMAC != "52:54:00:aa:bb:cc" || again.NICs[0].MAC != "52:54:00:aa:bb:cc" || again.NICs[0].IP != "10.0.0.5/24" {
		t.Errorf("NICs again: %+v", again.NICs)
	}
	if again.Seed == "" || again.Seed == given.Seed {
		t.Errorf("seed again %q: want a new one", again.Seed)
	}
	m := guestproto.Message{V: guestproto.Version, Type: guestproto.TypeClone, ID: "x", Clone: &again}
	if err := m.Validate(); err != nil {
		t.Errorf("CLONE with the identity again: %v", err)
	}
}

package hostd

import (
	"errors"
	"strings"
	"testing"

	"github.com/symvirt/symvirt/guestproto"
)

// TestMovedIdentityChecked: the clone identity a peer sends with an
// incoming migration is taken only with no seed, valid fields and each
// NIC's MAC one of the VM's own (a peer cannot rename another NIC).
func TestMovedIdentityChecked(t *testing.T) {
	spec := Spec{Name: "r1", NICs: []NIC{{ID: "net0", MAC: "52:54:00:12:00:01"}}}
	good := guestproto.Clone{MachineID: strings.Repeat("0f", 16), Hostname: "r1",
		NICs: []guestproto.CloneNIC{{OldMAC: "52:54:00:99:00:01", MAC: "52:54:00:12:00:01"}}}
	if err := checkMovedIdentity(good, spec); err != nil {
		t.Fatalf("the clone's own identity: %v", err)
	}
	for name, spoil := range map[string]func(*guestproto.Clone){
		"seed":      func(c *guestproto.Clone) { c.Seed = strings.Repeat("ab", 32) },
		"hostname":  func(c *guestproto.Clone) { c.Hostname = "$(reboot)" },
		"other MAC": func(c *guestproto.Clone) { c.NICs[0].MAC = "52:54:00:12:00:02" },
		"no MAC":    func(c *guestproto.Clone) { c.NICs[0].MAC = "" },
	} {
		c := good
		c.NICs = append([]guestproto.CloneNIC(nil), good.NICs...)
		spoil(&c)
		if err := checkMovedIdentity(c, spec); err == nil {
			t.Errorf("%s: taken", name)
		} else if name != "other MAC" && !errors.Is(err, guestproto.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

package guestproto

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckCloneIdentity(t *testing.T) {
	good := Clone{MachineID: strings.Repeat("ab", 16), Hostname: "r1",
		NICs: []CloneNIC{{OldMAC: "52:54:00:00:00:01", MAC: "52:54:00:00:00:02", IP: "10.0.0.2/24"}}}
	if err := CheckCloneIdentity(good); err != nil {
		t.Fatalf("a valid identity: %v", err)
	}
	bad := map[string]func(*Clone){
		"seed":     func(c *Clone) { c.Seed = strings.Repeat("00", 32) },
		"standby":  func(c *Clone) { c.Standby = true },
		"mid":      func(c *Clone) { c.MachineID = "../../etc" },
		"hostname": func(c *Clone) { c.Hostname = "a b;reboot" },
		"long":     func(c *Clone) { c.Hostname = strings.Repeat("a", MaxHostname+1) },
		"mac":      func(c *Clone) { c.NICs[0].MAC = "zz" },
		"ip":       func(c *Clone) { c.NICs[0].IP = "10.0.0.2; x" },
		"nics": func(c *Clone) {
			for range MaxCloneNICs {
				c.NICs = append(c.NICs, c.NICs[0])
			}
		},
	}
	for name, spoil := range bad {
		c := good
		c.NICs = append([]CloneNIC(nil), good.NICs...)
		spoil(&c)
		if err := CheckCloneIdentity(c); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

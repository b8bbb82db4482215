package guestproto

import (
	"fmt"
	"strings"
)

// CheckCloneIdentity validates a clone's kept identity (a CLONE's
// content without its seed, which is used once, and not a standby's
// placeholder) by a CLONE's own rules: a host checks one that another
// host hands over with a clone that moves to it.
func CheckCloneIdentity(c Clone) error {
	if c.Seed != "" || c.Standby {
		return fmt.Errorf("%w: clone identity: carries a seed or is a standby's", ErrMalformed)
	}
	c.Seed = strings.Repeat("00", MinCloneSeed) // checked apart: absent
	return Message{Type: TypeClone, Clone: &c}.checkClone()
}

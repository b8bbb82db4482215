package hostd

import "github.com/symvirt/symvirt/hostd/policy"

// Policy confines what a VM spec may make QEMU open on this host; it lives
// in hostd/policy.
type Policy = policy.Policy

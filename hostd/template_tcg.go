package hostd

import "fmt"

// cloneTBSizeMiB bounds a TCG clone's translation buffer (-accel
// tcg,tb-size=). QEMU's default (1 GiB on a 64-bit host, touched as code is
// translated) is sized for a guest that boots and runs anything; a clone
// starts booted and, at first, runs only guestd's clone work and its
// hooks: the pages it translates are QEMU's own anonymous memory, one
// copy per clone, which no clone shares. Past the bound TCG flushes and
// translates again: slower code, not more memory. Measured on the test
// guest (TestTemplateClones): a standby clone translates 14 MiB and a
// clone running its hooks fills 16; at 8 MiB the hooks took 4.3 s
// instead of 1.2 and a standby clone's CLONE 250-780 ms instead of
// 10-100. A clone's application with more code than this retranslates
// more often: the price of 16 MiB instead of the 70-80 a booted VM holds.
const cloneTBSizeMiB = 16

// cloneAccel is the accelerator option of a clone's QEMU.
func cloneAccel(accel string) string {
	if accel != "tcg" {
		return accel
	}
	return fmt.Sprintf("tcg,tb-size=%d", cloneTBSizeMiB)
}

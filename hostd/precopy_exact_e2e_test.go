package hostd

import (
	"testing"

	"github.com/symvirt/symvirt/internal/testguest"
)

// live_mode auto rests on a property of the QEMU it runs: where it takes
// precopy, a precopy image holds the guest's RAM at its point exactly, even
// with a guest rewriting memory throughout and QEMU syncing its dirty
// bitmap in the middle of the copy; where it takes the background snapshot
// under TCG (QEMU before 10), it is because precopy there loses guest
// writes. QEMU 7.2's bitmap sync clears the migration dirty bits of a
// RAM block a word at a time without resetting TCG's TLB entries, so a
// vCPU that keeps a page's entry writes it again unrecorded (fixed in
// QEMU 9.0, commit 03bfc2188f, "physmem: Fix migration dirty bitmap
// coherency with TCG memory access"; not in Debian 12's 7.2). This test
// mounts that loss on such a QEMU, and fails if it no longer happens, so a
// QEMU build carrying the fix is noticed and auto can move to precopy there.
func TestPrecopyImageExactWhereAutoTakesIt(t *testing.T) {
	h, vm := startDirtier(t)
	if h.cfg.LiveMode == "precopy" {
		const rounds = 10
		precopyImageRounds(t, h, vm, rounds, func(round, differ int) bool {
			if differ > 0 {
				t.Errorf("QEMU %s (%s): live_mode auto is precopy, but round %d's image differs from the guest's RAM at its point in %d pages",
					testguest.QemuVersion(t), h.cfg.Accel, round, differ)
			}
			return true
		})
		return
	}
	// On QEMU 7.2 most rounds lose writes (README, live_mode).
	const rounds = 20
	lost := -1
	precopyImageRounds(t, h, vm, rounds, func(round, differ int) bool {
		if differ > 0 {
			lost = round
		}
		return lost < 0
	})
	if lost < 0 {
		t.Fatalf("QEMU %s (%s): precopy images held the guest's RAM in %d of %d rounds, yet live_mode auto takes %s here: "+
			"if this QEMU carries the TCG dirty-tracking fix, let auto take precopy on it (exactTCGPrecopyMajor)",
			testguest.QemuVersion(t), h.cfg.Accel, rounds, rounds, h.cfg.LiveMode)
	}
	t.Logf("QEMU %s (%s): round %d's precopy image lost guest writes, as expected where auto takes %s",
		testguest.QemuVersion(t), h.cfg.Accel, lost, h.cfg.LiveMode)
}

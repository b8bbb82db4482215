package hostd_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// blobScript keeps 32 MiB of random data in the guest's RAM (its root file
// system) and prints its digest every second: pages in use, which a
// migration must carry whatever the guest hints.
const blobScript = `#!/bin/sh
head -c 33554432 /dev/urandom >/blob
( while :; do echo "symvirt-blob $(md5sum </blob | cut -c1-32)"; sleep 1; done ) &
`

var blobRE = regexp.MustCompile(`symvirt-blob ([0-9a-f]{32})`)

// TestMigrateSkipsHintedFreePages migrates a 512 MiB guest whose balloon
// driver hints its free pages (spec free_page_hints; the guest boots with
// init_on_alloc=0): QEMU sends fewer than three quarters of its pages (without the
// hints it sends every page at least once, a zero page as a marker), and the
// guest goes on at the destination with its data intact.
func TestMigrateSkipsHintedFreePages(t *testing.T) {
	src, dst := twoHosts(t, "52:54:00:bb:00:01")
	ctx := ctxT(t, 4*time.Minute)
	spec := guestSpec(t, "hints", "nic")
	spec.Memory, spec.FreePageHints = 512, true
	spec.Append += " init_on_alloc=0"
	spec.Initrd = testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/20-nics": {Mode: 0o755, Data: []byte(nicsScript)},
		"/etc/symvirt/rc.d/30-blob": {Mode: 0o755, Data: []byte(blobScript)},
	})
	if _, err := src.Client().Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	slog := serialLog(src, "hints")
	digest := blobRE.FindStringSubmatch(waitLog(t, slog, blobRE, 90*time.Second))[1]
	lastSeen := waitCounter(t, slog, 3, 30*time.Second)
	// Capped, so the guest has hinted before QEMU's first pass has gone
	// far: the hints race with it (a quick pass sends pages the guest
	// has not hinted yet).
	res, err := src.Client().Migrate(ctx, "hints", hostd.MigrateOptions{To: dst.Addr(), MaxBandwidth: 64 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ramPages := int64(spec.Memory) << 20 / 4096
	t.Logf("migrated: %d of %d pages sent, %d bytes, QEMU total %s, whole op %s", res.Pages, ramPages, res.Transferred, res.TotalTime, res.Duration)
	if res.Pages == 0 || res.Pages >= ramPages*3/4 {
		t.Errorf("QEMU sent %d pages of %d: the guest's free pages were not skipped", res.Pages, ramPages)
	}
	dlog := serialLog(dst, "hints")
	waitCounter(t, dlog, lastSeen+3, 60*time.Second)
	waitLog(t, dlog, blobRE, 30*time.Second)
	data, _ := os.ReadFile(dlog)
	var digests []string
	for _, m := range blobRE.FindAllStringSubmatch(string(data), -1) {
		digests = append(digests, m[1])
	}
	slices.Sort(digests)
	if digests = slices.Compact(digests); len(digests) != 1 || digests[0] != digest {
		t.Fatalf("the guest's data at the destination: digests %v, want only %s", digests, digest)
	}
	liveCheckpointWithHints(t, dst, digest)
}

// liveCheckpointWithHints checkpoints the hinting guest live at dst and
// restores it there in the VM's place. A precopy (QEMU 10's live mode
// here) may skip hinted pages as a migration does; a background snapshot
// (7.2's) may not, since the hints describe the pages free now and not at
// its point, so hostd saves that guest stop-and-save.
func liveCheckpointWithHints(t *testing.T, dst *testenv.Hostd, digest string) {
	ctx := ctxT(t, 3*time.Minute)
	dir := filepath.Join(t.TempDir(), "ck")
	res, err := dst.Client().Checkpoint(ctx, "hints", hostd.CheckpointOptions{Dir: dir, Live: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("live checkpoint: live %v, fallback %q, %d bytes, whole %s", res.Live, res.Fallback, res.Bytes, res.Duration)
	v, err := qemu.BinaryVersion(ctx, testguest.Qemu)
	if err != nil {
		t.Fatal(err)
	}
	if precopy := v.QEMU.Major >= 10; precopy != (res.Fallback == "") || !precopy && !strings.Contains(res.Fallback, "hints its free pages") {
		t.Fatalf("QEMU %d: live %v, fallback %q", v.QEMU.Major, res.Live, res.Fallback)
	}
	// Restored in place of the VM (a checkpoint is trusted by the host
	// that signed it; its NIC comes from that host's pool).
	if _, err := dst.Client().Stop(ctx, "hints", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := dst.Client().Delete(ctx, "hints"); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Client().Restore(ctx, hostd.RestoreOptions{Dir: dir}, nil); err != nil {
		t.Fatal(err)
	}
	clog := serialLog(dst, "hints")
	waitCounter(t, clog, 1, 60*time.Second)
	if got := blobRE.FindStringSubmatch(waitLog(t, clog, blobRE, 30*time.Second))[1]; got != digest {
		t.Fatalf("the restored copy's data: digest %s, want %s", got, digest)
	}
}

package hostd

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchMigrateLaunch measures a live migration with the destination's
// QEMU launched beside the source's Detach (the machine's Launch) and
// launched after it by the Migrate step (the ordering before Launch,
// launchLate), side by side in one run: one VM migrated back and forth
// between two hostds, the two orderings alternating, beside plain QEMU's
// migration in the same rounds. One JSON line per ordering, RAM mode and
// size: the median, its ratio to plain QEMU, and its per-phase breakdown.
func TestBenchMigrateLaunch(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	kernel, initrd := testguest.Paths(t)
	for _, mem := range testguest.BenchSizes(t, "SYMVIRT_BENCH_LAUNCH_MIB", []int{256, 1024}, 128, 2048) {
		benchLaunch(t, kernel, initrd, Size(mem))
	}
}

func benchLaunch(t *testing.T, kernel, initrd string, mem Size) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	phases := &phaseLog{}
	a, sockA := benchHostLog(t, "1", phases.handler())
	b, sockB := benchHostLog(t, "2", phases.handler())
	rounds := benchEnvInt("SYMVIRT_BENCH_LAUNCH_ROUNDS", 5, 1)
	var plain []benchSample
	ours := map[string][]benchSample{}
	defer func() { launchLate = false }()
	g := benchGuest{kernel: kernel, initrd: initrd}
	for _, shared := range []bool{true, false} {
		name := fmt.Sprintf("launch%d-%v", mem, shared)
		startBenchVM(ctx, t, a, name, mem, g, &shared)
		hosts, socks, at := [2]*Host{a, b}, [2]string{sockA, sockB}, 0
		for round := range rounds {
			plain = append(plain, benchSample{took: plainBaseline(ctx, t, a, mem, g)["migrate"]})
			// Which ordering goes first alternates with the rounds.
			for _, late := range []bool{round%2 == 1, round%2 == 0} {
				launchLate = late
				// A guest that took its NIC back (its unplug would wait).
				time.Sleep(2 * time.Second)
				v, err := hosts[at].Get(name)
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				res, err := v.Migrate(ctx, MigrateOptions{To: socks[1-at]}, nil)
				if err != nil {
					t.Fatal(err)
				}
				bench := map[bool]string{false: "migrate_launch_beside_detach", true: "migrate_launch_after_detach"}[late] +
					map[bool]string{true: "", false: "_private_ram"}[shared]
				ours[bench] = append(ours[bench], benchSample{bench: bench, took: res.Duration, phases: phases.since(start),
					extra: map[string]any{"qemu_total_seconds": res.TotalTime.Seconds(), "qemu_downtime_seconds": res.Downtime.Seconds()}})
				at = 1 - at
			}
		}
		removeBenchVM(t, hosts[at], name)
	}
	base := median(plain).took
	for bench, s := range ours {
		m := median(s)
		out := m.extra
		out["bench"], out["memory_mib"], out["seconds"], out["rounds"] = bench, int(mem), m.took.Seconds(), len(s)
		out["plain_qemu_seconds"], out["ratio_vs_plain_qemu"] = base.Seconds(), m.took.Seconds()/base.Seconds()
		out["phases_seconds"] = m.phases
		benchline.Print(out)
	}
}

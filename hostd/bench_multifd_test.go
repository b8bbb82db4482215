package hostd

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/symvirt/symvirt/hostd/qemu"
	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchMigrateMultifd measures a live migration between two hostds
// over multifd's channels (hostd's default from QEMU 9 on) and over one
// stream (migration_channels: 1; SYMVIRT_BENCH_MULTIFD_CHANNELS sets the
// other's count, default hostd's), beside plain QEMU's default migration
// in the same rounds: one VM with its RAM in /dev/shm (hostd's default)
// migrated back and forth, the two hostd modes alternating which goes
// first. One JSON line per mode and size: the median, its ratio to plain
// QEMU, the destination's RAM file allocation after the migration, and
// the per-phase breakdown.
func TestBenchMigrateMultifd(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	if v, err := qemu.BinaryVersion(context.Background(), testguest.Qemu); err != nil || !multifdQEMU(v) {
		t.Skipf("multifd needs QEMU %d or later (%s: %v %v)", multifdMinMajor, testguest.Qemu, v, err)
	}
	kernel, initrd := testguest.Paths(t)
	for _, mem := range testguest.BenchSizes(t, "SYMVIRT_BENCH_MULTIFD_MIB", []int{256, 1024, 2048}, 128, 2048) {
		benchMultifd(t, kernel, initrd, Size(mem))
	}
}

func benchMultifd(t *testing.T, kernel, initrd string, mem Size) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	phases := &phaseLog{}
	a, sockA := benchHostLog(t, "1", phases.handler())
	b, sockB := benchHostLog(t, "2", phases.handler())
	rounds := benchEnvInt("SYMVIRT_BENCH_MULTIFD_ROUNDS", 3, 1)
	many := benchEnvInt("SYMVIRT_BENCH_MULTIFD_CHANNELS", defaultMigrationChannels, 2)
	// A chain of multifd moves: each source's RAM file is as sparse as
	// the move before left it (otherwise a one-stream move, which fills
	// its destination's file, comes before each multifd one).
	chain := os.Getenv("SYMVIRT_BENCH_MULTIFD_CHAIN") == "1"
	g := benchGuest{kernel: kernel, initrd: initrd}
	name := fmt.Sprintf("multifd%d", mem)
	startBenchVM(ctx, t, a, name, mem, g, nil)
	hosts, socks, at := [2]*Host{a, b}, [2]string{sockA, sockB}, 0
	var plain []benchSample
	ours := map[string][]benchSample{}
	for round := range rounds {
		plain = append(plain, benchSample{took: plainBaseline(ctx, t, a, mem, g)["migrate"]})
		order := [][2]int{{many, 1}, {1, many}}[round%2]
		if chain {
			order = [2]int{many, many}
		}
		for _, channels := range order {
			a.cfg.MigrationChannels, b.cfg.MigrationChannels = channels, channels
			time.Sleep(2 * time.Second) // a guest that took its NIC back
			v, err := hosts[at].Get(name)
			if err != nil {
				t.Fatal(err)
			}
			srcAlloc := allocatedMiB(t, hosts[at], name)
			start := time.Now()
			res, err := v.Migrate(ctx, MigrateOptions{To: socks[1-at]}, nil)
			if err != nil {
				t.Fatal(err)
			}
			at = 1 - at
			bench := map[bool]string{true: "migrate_multifd", false: "migrate_one_stream"}[channels > 1]
			ours[bench] = append(ours[bench], benchSample{bench: bench, took: res.Duration, phases: phases.since(start),
				extra: map[string]any{"qemu_total_seconds": res.TotalTime.Seconds(), "qemu_downtime_seconds": res.Downtime.Seconds(),
					"channels": channels, "chain": chain, "pages": res.Pages, "source_ram_allocated_mib": srcAlloc, "multifd_bytes": res.MultifdBytes, "dest_ram_allocated_mib": allocatedMiB(t, hosts[at], name)}})
		}
	}
	removeBenchVM(t, hosts[at], name)
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

// allocatedMiB is how much of the VM's RAM file on h is allocated.
func allocatedMiB(t *testing.T, h *Host, name string) int64 {
	vm, err := h.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	f, err := vm.sharedRAM()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512 >> 20
}

package hostd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/pausewatch"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchLiveCheckpoint: the guest-visible pause (the gap in the guest's
// 1 ms timestamp loop on its console, on the host's clock, around the
// snapshot point), the longest stall of that loop during the operation, and
// the whole checkpoint time, live against stop-and-save, side by side, for
// guests with 60% of their memory in use. Live runs three times per size:
// background snapshot with RAM in /dev/shm (the default on this TCG host)
// and on 2 MiB huge pages, and precopy (live_mode precopy, the default
// under KVM). The snapshot point's own pause comes from QEMU's STOP and
// RESUME events; the tick gap also holds the stalls of the guest's first
// writes to pages while a background snapshot streams.
func TestBenchLiveCheckpoint(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/40-fill": {Mode: 0o755, Data: []byte(fillScript)},
		"/etc/symvirt/rc.d/41-tick": {Mode: 0o755, Data: []byte(pausewatch.TickScript)},
		"/bin/tick":                 {Src: pausewatch.TickBinary(t), Mode: 0o755}})
	huge := reserveHugePages(t, 1100)
	// e.g. SYMVIRT_BENCH_LIVE_MIB=2048: one size only.
	sizes := testguest.BenchSizes(t, "SYMVIRT_BENCH_LIVE_MIB", []int{256, 1024, 2048}, 128, 2048)
	auto := autoLiveMode(t)
	for _, n := range sizes {
		mem := Size(n)
		line := map[string]any{"bench": "live_vs_stop_checkpoint", "memory_mib": int(mem), "qemu": testguest.QemuVersion(t)}
		for _, mode := range []string{"live_shm", "live_hugepages", "live_precopy", "stop"} {
			if mode == "live_hugepages" && !huge {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			liveMode := "snapshot"
			if mode == "live_precopy" {
				liveMode = "precopy"
			}
			h, _ := benchHost(t, "4", liveMode)
			vm, err := h.Create(Spec{Name: fmt.Sprintf("live%d", mem), Memory: mem, VCPUs: 1, Kernel: kernel, Initrd: initrd,
				Append: "console=ttyS0 quiet", HugePages: mode == "live_hugepages"})
			if err != nil {
				t.Fatal(err)
			}
			if err := vm.Start(ctx); err != nil {
				t.Fatal(err)
			}
			serial := filepath.Join(vm.dir, fileSerial)
			waitSerial(t, serial, regexp.MustCompile(`symvirt-filled`))
			// A quiet second first, to know the ticks' normal gap.
			quiet := pausewatch.WatchGaps(serial)
			time.Sleep(time.Second)
			normal := quiet.End()
			g := pausewatch.WatchGaps(serial)
			res, err := vm.Checkpoint(ctx, CheckpointOptions{Dir: filepath.Join(t.TempDir(), "ck"), NoGuest: true, Live: mode != "stop"}, nil)
			time.Sleep(200 * time.Millisecond)
			gap := g.End()
			if err != nil {
				t.Fatal(err)
			}
			if mode != "stop" && !res.Live {
				t.Fatalf("not live: %s", res.Fallback)
			}
			// The pause at the cut: the gap around the moment the vCPUs
			// ran again (stop-and-save: the whole save). The longest
			// stall also counts the stream's write faults.
			line[mode+"_longest_stall_seconds"] = gap.Seconds()
			if mode == "stop" {
				line[mode+"_guest_pause_seconds"] = gap.Seconds()
			} else {
				line[mode+"_guest_pause_seconds"] = g.At(res.SnapshotAt).Seconds()
			}
			line[mode+"_tick_gap_when_quiet_seconds"] = normal.Seconds()
			line[mode+"_whole_seconds"] = res.Duration.Seconds()
			line[mode+"_bytes"] = res.Bytes
			if mode != "stop" {
				line[mode+"_snapshot_pause_seconds"] = res.Pause.Seconds()
				line[mode+"_qemu_downtime_seconds"] = res.Downtime.Seconds()
			}
			vm.kill()
			vm.cleanupAfterStop()
			cancel()
		}
		def := "live_shm"
		if auto == "precopy" {
			def = "live_precopy"
		}
		line["default_live_mode"] = auto
		line["default_guest_pause_seconds"] = line[def+"_guest_pause_seconds"]
		line["pause_ratio_stop_over_live_shm"] = line["stop_guest_pause_seconds"].(float64) / line["live_shm_guest_pause_seconds"].(float64)
		line["pause_ratio_stop_over_live_precopy"] = line["stop_guest_pause_seconds"].(float64) / line["live_precopy_guest_pause_seconds"].(float64)
		if huge {
			line["pause_ratio_stop_over_live_hugepages"] = line["stop_guest_pause_seconds"].(float64) / line["live_hugepages_guest_pause_seconds"].(float64)
		}
		benchline.Print(line)
	}
}

// autoLiveMode is the live mode live_mode auto takes with the QEMU the
// tests run.
func autoLiveMode(t *testing.T) string {
	h, _ := benchHost(t, "6")
	return h.cfg.LiveMode
}

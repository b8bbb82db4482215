package hostd_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

func dirtyBinary(t *testing.T) string { return testenv.Make(t, "examples/dirty") }

var passRE = regexp.MustCompile(`dirty: pass (\d+) (ok|CORRUPT)`)

// passes returns the batch job's last pass and whether any was corrupt,
// over every console log given.
func passes(logs ...string) (last int, corrupt bool) {
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		for _, m := range passRE.FindAllStringSubmatch(string(data), -1) {
			n, _ := strconv.Atoi(m[1])
			last = max(last, n)
			corrupt = corrupt || m[2] == "CORRUPT"
		}
	}
	return last, corrupt
}

// TestDependencyAwareMigration migrates a guest that runs (a) an
// untainted batch job rewriting a 256 MiB buffer and (b) a TCP echo
// service used by a client outside the VM (tainted), over a capped link,
// first with plain pre-copy, then dependency-aware (the batch job frozen
// for the migration), side by side. It prints `make bench`'s JSON line.
func TestDependencyAwareMigration(t *testing.T) {
	src, dst := twoHosts(t, "")
	for _, h := range []*testenv.Hostd{src, dst} {
		testenv.Bridge(t, h.NS, "br0")
		testenv.Tap(t, h.NS, "tnet1", "br0")
	}
	testenv.BridgeLink(t, src.NS, "br0", dst.NS, "br0")
	client := testenv.NewNetNS(t, "c")
	testenv.Attach(t, client, "10.79.0.1/24", src.NS, "br0")
	ctx := ctxT(t, 15*time.Minute)
	kernel, _ := testguest.Paths(t)
	spec := hostd.Spec{Name: "dep1", Memory: 512, VCPUs: 1, Kernel: kernel,
		Initrd: testguest.Initrd(t, map[string]testguest.File{
			"/bin/dirty":                 {Src: dirtyBinary(t), Mode: 0o755},
			"/etc/symvirt/rc.d/40-echo":  {Mode: 0o755, Data: []byte(echoRC)},
			"/etc/symvirt/rc.d/45-dirty": {Mode: 0o755, Data: []byte("#!/bin/sh\n/bin/dirty 256 </dev/null >/dev/console 2>&1 &\n")},
		}),
		Append: "console=ttyS0 quiet panic=-1 symvirt.agent=1 symvirt.ip=10.79.0.10/24",
		NICs:   []hostd.NIC{{ID: "net1", Model: "virtio-net-pci", Backend: "tap", Tap: "tnet1", MAC: "52:54:00:12:00:09"}},
		Guest:  hostd.Channel{Type: "virtio-serial"}}
	if _, err := src.Client().Create(ctx, spec, true); err != nil {
		t.Fatal(err)
	}
	logs := []string{serialLog(src, "dep1")}
	// The buffer is written through at least once before we measure.
	deadline := time.Now().Add(3 * time.Minute)
	for n, _ := passes(logs...); n < 2; n, _ = passes(logs...) {
		if time.Now().After(deadline) {
			t.Fatal("the batch job never completed two passes")
		}
		time.Sleep(500 * time.Millisecond)
	}
	echo := startEcho(t, client, "10.79.0.10:7000")
	defer echo.stop()
	line := map[string]any{"bench": "dependency_aware_migration", "memory_mib": 512, "dirty_mib": 256,
		"max_bandwidth_mib_s": 32}
	// The side-by-side run with plain pre-copy is `make bench` (plain
	// takes minutes under TCG); the test suite runs dependency-aware only.
	modes := []bool{true}
	bench := os.Getenv("SYMVIRT_BENCH") == "1"
	if bench {
		modes = []bool{false, true}
	}
	from, to := src, dst
	for _, aware := range modes {
		mode := "plain"
		if aware {
			mode = "aware"
		}
		echo.mu.Lock()
		echo.maxGap, echo.last = 0, time.Now()
		echo.mu.Unlock()
		res, err := from.Client().Migrate(ctx, "dep1", hostd.MigrateOptions{To: to.Addr(), MaxBandwidth: 32 << 20,
			DowntimeLimit: 300 * time.Millisecond, DependencyAware: aware,
			Capabilities: map[string]bool{"auto-converge": true}}, nil)
		if err != nil {
			t.Fatalf("%s migration: %v", mode, err)
		}
		time.Sleep(time.Second)
		echo.mu.Lock()
		gap, echoErr := echo.maxGap, echo.err
		echo.mu.Unlock()
		if echoErr != nil {
			t.Fatalf("%s migration broke the echo connection: %v", mode, echoErr)
		}
		logs = append(logs, serialLog(to, "dep1"))
		// The batch job goes on, and its buffer is intact.
		before, _ := passes(logs...)
		deadline := time.Now().Add(2 * time.Minute)
		for n, _ := passes(logs...); n < before+1; n, _ = passes(logs...) {
			if time.Now().After(deadline) {
				t.Fatalf("after the %s migration the batch job stopped at pass %d", mode, n)
			}
			time.Sleep(300 * time.Millisecond)
		}
		_, corrupt := passes(logs...)
		line[mode+"_total_seconds"] = res.Duration.Seconds()
		line[mode+"_qemu_total_seconds"] = res.TotalTime.Seconds()
		line[mode+"_bytes"] = res.Transferred
		line[mode+"_qemu_downtime_seconds"] = res.Downtime.Seconds()
		line[mode+"_echo_longest_gap_seconds"] = gap.Seconds()
		line[mode+"_batch_correct"] = !corrupt
		if corrupt {
			t.Fatalf("the batch job's buffer is corrupt after the %s migration", mode)
		}
		from, to = to, from
	}
	// The guest froze the batch job for the round and thawed it after.
	data, _ := os.ReadFile(serialLog(from, "dep1"))
	if !regexp.MustCompile(`"msg":"thawed".*"moved_back":[1-9]`).Match(data) {
		t.Errorf("the guest never thawed frozen processes after the migration")
	}
	// The batch job was frozen: pre-copy sent little more than the guest's
	// memory once (a 512 MiB guest), not the buffer again and again.
	if b := line["aware_bytes"].(int64); b > 700<<20 {
		t.Errorf("dependency-aware migration sent %d bytes for a 512 MiB guest", b)
	}
	if !bench {
		return
	}
	line["bytes_ratio_plain_over_aware"] = float64(line["plain_bytes"].(int64)) / float64(line["aware_bytes"].(int64))
	line["time_ratio_plain_over_aware"] = line["plain_total_seconds"].(float64) / line["aware_total_seconds"].(float64)
	out, _ := json.Marshal(line)
	fmt.Println(string(out))
	if line["aware_bytes"].(int64) >= line["plain_bytes"].(int64) {
		t.Errorf("dependency-aware migration sent %d bytes, plain %d", line["aware_bytes"], line["plain_bytes"])
	}
}

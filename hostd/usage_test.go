package hostd

import (
	"os"
	"testing"
	"time"
)

func TestUsageConfigDefaults(t *testing.T) {
	c := Config{StateDir: t.TempDir()}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.UsageWindow != time.Minute || c.UsageInterval != 5*time.Second || c.UsageGuestInterval != 15*time.Second {
		t.Errorf("usage defaults: %v %v %v", c.UsageWindow, c.UsageInterval, c.UsageGuestInterval)
	}
	if c.Capacity.CPU < 1 || c.Capacity.Memory < 1 {
		t.Errorf("default capacity %+v, want the machine's", c.Capacity)
	}
	bad := Config{StateDir: t.TempDir(), UsageWindow: -time.Second}
	if err := bad.setDefaults(); err == nil {
		t.Error("negative usage_window accepted")
	}
}

func TestProcTicks(t *testing.T) {
	a, err := procTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
	}
	b, err := procTicks(os.Getpid())
	if err != nil || b < a {
		t.Fatalf("ticks %d then %d, %v", a, b, err)
	}
	if _, err := procTicks(1 << 30); err == nil {
		t.Error("no error for a missing process")
	}
}

// The window's figures: CPU time over wall time of the samples of the
// current process, the guest's memory averaged, the configured memory
// without a report.
func TestVMUsageWindow(t *testing.T) {
	h := &Host{usage: &usageState{vms: map[string]*vmSamples{}}}
	if h.vmUsage("x", 128) != nil {
		t.Fatal("usage without samples")
	}
	t0 := time.Unix(1000, 0)
	s := h.usage.get("x")
	s.cpu = trimCPU([]cpuSample{{t0, 7, 0}, {t0.Add(time.Second), 8, 100}}, 8, t0)
	s.cpu = append(s.cpu, cpuSample{t0.Add(3 * time.Second), 8, 150})
	u := h.vmUsage("x", 128)
	if u == nil || u.CPU != 0.25 || u.WindowS != 2 || u.Mem != 128<<20 || u.MemSource != "configured" {
		t.Fatalf("usage %+v", u)
	}
	s.mem = trimMem([]memSample{{t0, 1}, {t0.Add(2 * time.Second), 10 << 20}, {t0.Add(3 * time.Second), 20 << 20}}, t0.Add(time.Second))
	if u := h.vmUsage("x", 128); u.Mem != 15<<20 || u.MemSource != "guest" {
		t.Fatalf("usage %+v", u)
	}
}

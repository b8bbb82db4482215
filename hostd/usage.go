package hostd

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/symvirt/symvirt/guestproto"
	"github.com/symvirt/symvirt/internal/meminfo"
)

// Usage defaults: CPU is sampled every interval and averaged over the
// window; the guest is asked for its memory less often (each question is a
// short session on its channel).
const (
	defaultUsageWindow        = time.Minute
	defaultUsageInterval      = 5 * time.Second
	defaultUsageGuestInterval = 15 * time.Second
	// clockTicks is the unit of /proc/PID/stat's utime and stime
	// (sysconf(_SC_CLK_TCK), 100 on every Linux hostd runs on).
	clockTicks = 100
)

// Capacity is what a host offers its VMs: CPU in cores, memory in MiB.
// The defaults are the machine's (nproc and MemTotal).
type Capacity struct {
	CPU    float64 `yaml:"cpu" json:"cpu"`
	Memory Size    `yaml:"memory" json:"memory"`
}

// HostCapacity is Capacity as the API reports it (memory in bytes, the
// unit of VM usage).
type HostCapacity struct {
	CPU float64 `json:"cpu"`
	Mem int64   `json:"mem"`
}

// VMUsage is what a VM used over the host's usage window: CPU in cores
// (its QEMU process's CPU time over wall time) and memory in bytes (what
// the guest reported in use, bounded by its configured memory; the
// configured memory itself when the guest said nothing).
type VMUsage struct {
	CPU       float64 `json:"cpu"`
	Mem       int64   `json:"mem"`
	MemSource string  `json:"mem_source"` // "guest" or "configured"
	// WindowS is the span the figures cover, in seconds (shorter than the
	// configured window for a VM that started or arrived lately).
	WindowS float64 `json:"window_s"`
}

func (c *Config) usageDefaults() error {
	if c.UsageWindow < 0 || c.UsageInterval < 0 || c.UsageGuestInterval < 0 {
		return fmt.Errorf("config: usage_window, usage_interval and usage_guest_interval must not be negative")
	}
	if c.UsageWindow == 0 {
		c.UsageWindow = defaultUsageWindow
	}
	if c.UsageInterval == 0 {
		c.UsageInterval = min(defaultUsageInterval, c.UsageWindow)
	}
	if c.UsageGuestInterval == 0 {
		c.UsageGuestInterval = max(defaultUsageGuestInterval, c.UsageInterval)
	}
	if c.Capacity.CPU < 0 || c.Capacity.Memory < 0 {
		return fmt.Errorf("config: capacity must not be negative")
	}
	if c.Capacity.CPU == 0 {
		c.Capacity.CPU = float64(runtime.NumCPU())
	}
	if c.Capacity.Memory == 0 {
		if data, err := os.ReadFile("/proc/meminfo"); err == nil {
			c.Capacity.Memory = Size(meminfo.Parse(data).MemTotal >> 20)
		}
	}
	return nil
}

// Capacity returns the host's capacity.
func (h *Host) Capacity() HostCapacity {
	return HostCapacity{CPU: h.cfg.Capacity.CPU, Mem: int64(h.cfg.Capacity.Memory) << 20}
}

type cpuSample struct {
	at    time.Time
	pid   int
	ticks int64
}

type memSample struct {
	at   time.Time
	used int64
}

// vmSamples are one VM's samples within the window.
type vmSamples struct {
	cpu      []cpuSample
	mem      []memSample
	lastAsk  time.Time
	inFlight bool
}

// usageState holds every VM's samples.
type usageState struct {
	mu  sync.Mutex
	vms map[string]*vmSamples
}

func (u *usageState) get(name string) *vmSamples {
	s := u.vms[name]
	if s == nil {
		s = &vmSamples{}
		u.vms[name] = s
	}
	return s
}

// procTicks reads a process's CPU time (utime+stime, all threads) in
// clock ticks.
func procTicks(pid int) (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields start
	// after the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// After the name: state is f[0], utime f[11], stime f[12].
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return ut + st, nil
}

// usageLoop samples every VM until ctx ends.
func (h *Host) usageLoop(ctx context.Context) {
	h.metrics.reg.MustRegister(newUsageCollector(h))
	t := time.NewTicker(h.cfg.UsageInterval)
	defer t.Stop()
	for {
		h.sampleUsage(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sampleUsage takes one CPU sample of every VM, asks the idle guests due
// for it their memory (in the background), and forgets the VMs gone.
func (h *Host) sampleUsage(ctx context.Context, now time.Time) {
	h.mu.Lock()
	vms := make([]*VM, 0, len(h.vms))
	for _, vm := range h.vms {
		vms = append(vms, vm)
	}
	h.mu.Unlock()
	u := h.usage
	seen := map[string]bool{}
	for _, vm := range vms {
		seen[vm.name] = true
		vm.mu.Lock()
		pid, idle := vm.rt.PID, vm.operation == "" && vm.rt.Lease == nil && !vm.rt.Incoming && vm.proc != nil
		channel := vm.spec.Guest.Type
		vm.mu.Unlock()
		ticks, err := procTicks(pid)
		u.mu.Lock()
		s := u.get(vm.name)
		if err != nil || pid == 0 {
			s.cpu, s.mem = nil, nil // not running: nothing to average
			u.mu.Unlock()
			continue
		}
		s.cpu = append(trimCPU(s.cpu, pid, now.Add(-h.cfg.UsageWindow)), cpuSample{at: now, pid: pid, ticks: ticks})
		s.mem = trimMem(s.mem, now.Add(-h.cfg.UsageWindow))
		ask := idle && channel != "" && channel != "none" && !s.inFlight && now.Sub(s.lastAsk) >= h.cfg.UsageGuestInterval
		if ask {
			s.inFlight, s.lastAsk = true, now
		}
		u.mu.Unlock()
		if ask {
			go h.askGuestMem(ctx, vm)
		}
	}
	u.mu.Lock()
	for name := range u.vms {
		if !seen[name] {
			delete(u.vms, name)
		}
	}
	u.mu.Unlock()
}

func trimCPU(s []cpuSample, pid int, since time.Time) []cpuSample {
	i := 0
	for i < len(s) && (s[i].pid != pid || s[i].at.Before(since)) {
		i++
	}
	return append(s[:0], s[i:]...)
}

func trimMem(s []memSample, since time.Time) []memSample {
	i := 0
	for i < len(s) && s[i].at.Before(since) {
		i++
	}
	return append(s[:0], s[i:]...)
}

// askGuestMem opens a short session with the guest: its HELLO_ACK carries
// the memory it uses. A guest that does not answer is not asked again
// before the next guest interval.
func (h *Host) askGuestMem(ctx context.Context, vm *VM) {
	defer func() {
		h.usage.mu.Lock()
		h.usage.get(vm.name).inFlight = false
		h.usage.mu.Unlock()
	}()
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := vm.dialGuest(gctx)
	if err != nil {
		vm.log.Debug("usage: guest channel", "err", err)
		return
	}
	host := guestproto.NewHost(conn, vm.log.With("channel", "usage"))
	defer host.Close()
	ack, err := host.Handshake(gctx)
	if err != nil || ack.Usage.MemTotal == 0 {
		vm.log.Debug("usage: no memory report from the guest", "err", err)
		return
	}
	limit := int64(vm.Spec().Memory) << 20
	used := min(ack.Usage.MemUsed, limit)
	h.usage.mu.Lock()
	s := h.usage.get(vm.name)
	s.mem = append(s.mem, memSample{at: time.Now(), used: used})
	h.usage.mu.Unlock()
}

// vmUsage is a VM's usage over the window; nil when it has no two CPU
// samples yet (it just started, arrived or is not running).
func (h *Host) vmUsage(name string, configuredMiB Size) *VMUsage {
	u := h.usage
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.vms[name]
	if s == nil || len(s.cpu) < 2 {
		return nil
	}
	first, last := s.cpu[0], s.cpu[len(s.cpu)-1]
	span := last.at.Sub(first.at).Seconds()
	if span <= 0 {
		return nil
	}
	out := &VMUsage{CPU: float64(last.ticks-first.ticks) / clockTicks / span, WindowS: span,
		Mem: int64(configuredMiB) << 20, MemSource: "configured"}
	if len(s.mem) > 0 {
		var sum int64
		for _, m := range s.mem {
			sum += m.used
		}
		out.Mem, out.MemSource = sum/int64(len(s.mem)), "guest"
	}
	return out
}

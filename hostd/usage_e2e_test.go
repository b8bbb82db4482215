package hostd_test

import (
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// burnRC spins a shell loop in the guest when symvirt.burn=1.
const burnRC = `#!/bin/sh
[ "$SYMVIRT_BURN" = 1 ] && ( while :; do :; done ) </dev/null >/dev/null 2>&1 &
exit 0
`

func usageSpec(t *testing.T, name, extra string) hostd.Spec {
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{
		"/etc/symvirt/rc.d/30-burn": {Mode: 0o755, Data: []byte(burnRC)},
	})
	return hostd.Spec{Name: name, Memory: 128, VCPUs: 1, Kernel: kernel, Initrd: initrd,
		Append: "console=ttyS0 quiet panic=-1 symvirt.agent=1 symvirt.name=" + name + extra,
		Guest:  hostd.Channel{Type: "virtio-serial"}}
}

// hostd reports each VM's usage over its window: CPU from the QEMU
// process's CPU time (a guest spinning uses more than an idle one),
// memory from guestd's report (below the configured 128 MiB), and the
// host's capacity from its configuration; the metrics say the same.
func TestVMUsageReported(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "capacity: {cpu: 1.5, memory: 1G}\n"+
		"usage_window: 8s\nusage_interval: 1s\nusage_guest_interval: 2s\n")
	ctx := ctxT(t, 4*time.Minute)
	c := h.Client()
	hi, err := c.Host(ctx)
	if err != nil || hi.Capacity != (hostd.HostCapacity{CPU: 1.5, Mem: 1 << 30}) {
		t.Fatalf("host capacity: %+v, %v", hi.Capacity, err)
	}
	for _, vm := range []struct{ name, extra string }{{"idle", ""}, {"burn", " symvirt.burn=1"}} {
		if _, err := c.Create(ctx, usageSpec(t, vm.name, vm.extra), true); err != nil {
			t.Fatal(err)
		}
	}
	// Booting costs CPU: the idle guest's window must have left its boot
	// behind before the spinning one stands out.
	use := map[string]*hostd.VMUsage{}
	measured := func() bool {
		list, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range list {
			use[v.Name] = v.Usage
		}
		for _, name := range []string{"idle", "burn"} {
			if u := use[name]; u == nil || u.MemSource != "guest" || u.WindowS < 6 {
				return false
			}
		}
		return use["burn"].CPU > 2*use["idle"].CPU
	}
	for end := time.Now().Add(3 * time.Minute); !measured() && time.Now().Before(end); {
		time.Sleep(time.Second)
	}
	for name, u := range use {
		if u == nil || u.MemSource != "guest" {
			t.Fatalf("vm %s: usage %+v, want the guest's memory report", name, u)
		}
		if u.Mem <= 0 || u.Mem > 128<<20 {
			t.Errorf("vm %s: memory in use %d, want in (0, 128 MiB]", name, u.Mem)
		}
		t.Logf("vm %s: cpu %.3f cores, mem %d MiB over %.1f s", name, u.CPU, u.Mem>>20, u.WindowS)
	}
	if !(use["burn"].CPU > 2*use["idle"].CPU) {
		t.Errorf("spinning guest's cpu %.3f never above twice the idle one's %.3f", use["burn"].CPU, use["idle"].CPU)
	}
	m := scrape(t, h)
	for _, want := range []string{`symvirt_hostd_vm_cpu_cores{vm="burn"}`, `symvirt_hostd_vm_memory_used_bytes{source="guest",vm="idle"}`,
		"symvirt_hostd_capacity_cpu_cores 1.5"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

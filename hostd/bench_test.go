package hostd

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchOps is `make bench` for hostd: it prints one JSON line per
// measurement (detach, attach, checkpoint, restore, migrate) for a 256 MiB
// and a 1 GiB guest, and the checkpoint against a bare QEMU save of the same
// VM (no hashing, no fsync) run side by side: the ratio is hostd's
// overhead for a checkpoint it can vouch for.
func TestBenchOps(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	kernel, initrd := testguest.Paths(t)
	for _, mem := range []Size{256, 1024} {
		benchSize(t, kernel, initrd, mem)
	}
}

func emit(v map[string]any) {
	data, _ := json.Marshal(v)
	fmt.Println(string(data))
}

func benchHost(t *testing.T, name string) (*Host, string) {
	dir := t.TempDir()
	h, err := New(Config{StateDir: dir, Logger: slog.New(slog.DiscardHandler),
		Pools: map[string][]map[string]string{"nic": {{"mac": "52:54:00:ee:00:0" + name}}}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "hostd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Close()
		for _, vm := range h.List() {
			if v, err := h.Get(vm.Name); err == nil {
				v.kill()
			}
		}
		h.Close()
	})
	return h, sock
}

func benchSize(t *testing.T, kernel, initrd string, mem Size) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	a, _ := benchHost(t, "1")
	_, sockB := benchHost(t, "2")
	name := fmt.Sprintf("bench%d", mem)
	vm, err := a.Create(Spec{Name: name, Memory: mem, VCPUs: 1, Kernel: kernel, Initrd: initrd,
		Append: "console=ttyS0 quiet symvirt.counter=1",
		NICs:   []NIC{{ID: "pt0", Model: "vmxnet3", Backend: "user", Passthrough: true, Pool: "nic"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-counter 3`))
	base := map[string]any{"memory_mib": int(mem)}
	with := func(m map[string]any) map[string]any {
		for k, v := range base {
			m[k] = v
		}
		return m
	}

	start := time.Now()
	if err := vm.Detach(ctx, "pt0"); err != nil {
		t.Fatal(err)
	}
	emit(with(map[string]any{"bench": "detach", "seconds": time.Since(start).Seconds()}))
	start = time.Now()
	if err := vm.Attach(ctx, "pt0"); err != nil {
		t.Fatal(err)
	}
	emit(with(map[string]any{"bench": "attach", "seconds": time.Since(start).Seconds()}))

	// Baseline: a bare QEMU save of the same stopped VM through a pipe,
	// bytes discarded: what any save costs before hostd adds its guarantees.
	mon, _ := vm.monitor()
	mon.Stop(ctx)
	start = time.Now()
	if _, err := saveState(ctx, mon, filepath.Join(t.TempDir(), "bare"), func(Progress) {}); err != nil {
		t.Fatal(err)
	}
	bare := time.Since(start)
	mon.Cont(ctx)
	emit(with(map[string]any{"bench": "save_baseline_stream", "seconds": bare.Seconds()}))

	dir := filepath.Join(t.TempDir(), "ckpt")
	res, err := vm.Checkpoint(ctx, CheckpointOptions{Dir: dir, Stop: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	emit(with(map[string]any{"bench": "checkpoint", "seconds": res.Duration.Seconds(),
		"vcpu_stopped_seconds": res.Downtime.Seconds(), "bytes": res.Bytes,
		"ratio_vs_bare_save": res.Duration.Seconds() / bare.Seconds()}))

	start = time.Now()
	vm, err = a.Restore(ctx, RestoreOptions{Dir: dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	emit(with(map[string]any{"bench": "restore", "seconds": time.Since(start).Seconds()}))

	mres, err := vm.Migrate(ctx, MigrateOptions{To: sockB}, nil)
	if err != nil {
		t.Fatal(err)
	}
	emit(with(map[string]any{"bench": "migrate", "seconds": mres.Duration.Seconds(),
		"qemu_total_seconds": mres.TotalTime.Seconds(), "qemu_downtime_seconds": mres.Downtime.Seconds(),
		"bytes": mres.Transferred}))
}

func waitSerial(t *testing.T, path string, re *regexp.Regexp) {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if data, _ := os.ReadFile(path); re.Match(data) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: no %s", path, re)
}

package hostd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/benchline"
	"github.com/symvirt/symvirt/internal/pki"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchMigrateTLS is `make bench` for the migration stream: the same
// guest (RAM mostly filled) migrates back and forth between two hostds,
// alternating TLS and plain rounds in one run, for a 256 MiB and a 1 GiB
// guest; it prints each round and the ratio of the medians.
func TestBenchMigrateTLS(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	kernel, _ := testguest.Paths(t)
	initrd := testguest.Initrd(t, map[string]testguest.File{"/etc/symvirt/rc.d/40-fill": {Mode: 0o755, Data: []byte(fillScript)}})
	certs := t.TempDir()
	if err := pki.Init(certs, pki.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	cert, key, err := pki.Issue(certs, pki.RoleHostd, "bench", nil, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, mem := range []Size{256, 1024} {
		benchMigrateTLS(t, kernel, initrd, mem, cert, key, filepath.Join(certs, "ca.crt"))
	}
}

func benchMigrateTLS(t *testing.T, kernel, initrd string, mem Size, cert, key, ca string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	a, sockA := benchHost(t, "7")
	b, sockB := benchHost(t, "8")
	tlsOn := func(on bool) {
		for _, h := range []*Host{a, b} {
			h.cfg.TLSCert, h.cfg.TLSKey, h.cfg.TLSCA = cert, key, ca
			h.cfg.MigrationTLS = &on
		}
	}
	name := fmt.Sprintf("mtls%d", mem)
	vm, err := a.Create(Spec{Name: name, Memory: mem, VCPUs: 1, Kernel: kernel, Initrd: initrd, Append: "console=ttyS0 quiet"})
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitSerial(t, filepath.Join(vm.dir, fileSerial), regexp.MustCompile(`symvirt-filled`))
	hosts := map[*Host]string{a: sockB, b: sockA} // where a VM on this host goes next
	at := a
	times := map[bool][]float64{}
	for round := range 6 {
		on := round%2 == 1
		tlsOn(on)
		v, err := at.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		res, err := v.Migrate(ctx, MigrateOptions{To: hosts[at], NoGuest: true}, nil)
		if err != nil {
			t.Fatalf("migrate (tls %v): %v", on, err)
		}
		if at == a {
			at = b
		} else {
			at = a
		}
		times[on] = append(times[on], res.TotalTime.Seconds())
		benchline.Print(map[string]any{"bench": "migrate_stream", "tls": on, "memory_mib": int(mem), "round": round,
			"seconds": res.Duration.Seconds(), "qemu_total_seconds": res.TotalTime.Seconds(), "bytes": res.Transferred})
	}
	median := func(s []float64) float64 { slices.Sort(s); return s[len(s)/2] }
	benchline.Print(map[string]any{"bench": "migrate_tls_vs_plain", "memory_mib": int(mem),
		"tls_median_seconds": median(times[true]), "plain_median_seconds": median(times[false]),
		"ratio": median(times[true]) / median(times[false])})
}

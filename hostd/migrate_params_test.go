package hostd

import (
	"strings"
	"testing"
	"time"
)

// A live migration asks QEMU for this host's downtime-limit (under KVM
// 50 ms unless configured, not QEMU's 300 ms; under TCG QEMU's own unless
// configured); a step's own limit overrides it.
func TestMigrateParamsDowntime(t *testing.T) {
	for _, c := range []struct {
		accel     string
		cfg, step time.Duration
		want      any
	}{{"kvm", 0, 0, int64(50)}, {"tcg", 0, 0, nil}, {"tcg", 20 * time.Millisecond, 0, int64(20)},
		{"kvm", 0, 200 * time.Millisecond, int64(200)}, {"tcg", 0, 200 * time.Millisecond, int64(200)}} {
		cfg := Config{StateDir: t.TempDir(), Accel: c.accel, MigrationDowntime: c.cfg}
		if err := cfg.setDefaults(); err != nil {
			t.Fatal(err)
		}
		h := &Host{cfg: cfg}
		p := h.migrateParams(&MigrateArgs{DowntimeLimit: c.step})
		if p["downtime-limit"] != c.want {
			t.Errorf("%s, config %v, step %v: downtime-limit %v, want %v", c.accel, c.cfg, c.step, p["downtime-limit"], c.want)
		}
	}
	cfg := Config{StateDir: t.TempDir(), MigrationDowntime: -time.Millisecond}
	if err := cfg.setDefaults(); err == nil || !strings.Contains(err.Error(), "migration_downtime_limit") {
		t.Errorf("a negative migration_downtime_limit: %v", err)
	}
	if caps := migrateCapabilities(map[string]bool{"auto-converge": true}, 0); !caps["events"] || !caps["auto-converge"] || caps["multifd"] {
		t.Errorf("capabilities %v: want events and the caller's, no multifd", caps)
	}
	if caps := migrateCapabilities(map[string]bool{"multifd": false}, 4); !caps["multifd"] {
		t.Errorf("capabilities %v over 4 channels: want multifd, whatever the caller asked", caps)
	}
}

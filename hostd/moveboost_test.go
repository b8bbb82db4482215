package hostd

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The settings that shorten a moved VM's pause are on unless a host's
// config turns them off.
func TestMoveSettingsDefaults(t *testing.T) {
	for _, c := range []struct {
		yaml  string
		idle  bool
		boost time.Duration
	}{
		{"", true, 2 * time.Second},
		{"migration_idle_thread: false\nmigration_resume_boost: 0s\n", false, 0},
		{"migration_idle_thread: true\nmigration_resume_boost: 500ms\n", true, 500 * time.Millisecond},
	} {
		dir := t.TempDir()
		f := filepath.Join(dir, "hostd.yaml")
		if err := os.WriteFile(f, []byte("state_dir: "+dir+"\n"+c.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(f)
		if err == nil {
			err = cfg.setDefaults()
		}
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		if *cfg.MigrationIdleThread != c.idle || *cfg.MigrationResumeBoost != c.boost {
			t.Errorf("%q: migration_idle_thread %v, migration_resume_boost %v; want %v, %v",
				c.yaml, *cfg.MigrationIdleThread, *cfg.MigrationResumeBoost, c.idle, c.boost)
		}
	}
}

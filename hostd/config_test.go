package hostd

import (
	"strings"
	"testing"
)

func TestLiveModeDefaults(t *testing.T) {
	for _, c := range []struct{ accel, mode, want string }{
		{"kvm", "", "precopy"}, {"tcg", "", "snapshot"}, {"tcg", "auto", "snapshot"},
		{"tcg", "precopy", "precopy"}, {"kvm", "snapshot", "snapshot"}} {
		cfg := Config{StateDir: t.TempDir(), Accel: c.accel, LiveMode: c.mode}
		if err := cfg.setDefaults(); err != nil || cfg.LiveMode != c.want {
			t.Errorf("accel %s, live_mode %q: got %q (%v), want %q", c.accel, c.mode, cfg.LiveMode, err, c.want)
		}
	}
	cfg := Config{StateDir: t.TempDir(), LiveMode: "fast"}
	if err := cfg.setDefaults(); err == nil || !strings.Contains(err.Error(), `live_mode "fast"`) {
		t.Errorf("live_mode fast: %v", err)
	}
}

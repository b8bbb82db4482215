package hostd_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// TestBenchCooperationRound is `make bench`'s line for one cooperation
// round (prepare -> ready -> resume) on real QEMU, with the C hook
// application registered and without one, side by side.
func TestBenchCooperationRound(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	h := testenv.StartHostd(t, "a", nil, "", "")
	ctx := ctxT(t, 5*time.Minute)
	c := h.Client()
	with := coopSpec(t, "withapp", "", nil)
	without := guestSpec(t, "noapp", "")
	without.Initrd = testguest.Initrd(t, map[string]testguest.File{})
	without.Append += " symvirt.agent=1"
	without.Guest = hostd.Channel{Type: "virtio-serial"}
	for _, s := range []hostd.Spec{with, without} {
		if _, err := c.Create(ctx, s, true); err != nil {
			t.Fatal(err)
		}
	}
	waitLog(t, serialLog(h, "withapp"), regexp.MustCompile(`hook: registered`), 90*time.Second)
	waitLog(t, serialLog(h, "noapp"), regexp.MustCompile(`virtio-serial port open`), 90*time.Second)
	median := func(vm string) (ready, round time.Duration) {
		var rs, ds []time.Duration
		for range 21 {
			res, err := c.Drill(ctx, vm)
			if err != nil {
				t.Fatal(err)
			}
			rs, ds = append(rs, res.Ready), append(ds, res.Round)
		}
		slices.Sort(rs)
		slices.Sort(ds)
		return rs[10], ds[10]
	}
	wr, wd := median("withapp")
	nr, nd := median("noapp")
	line, _ := json.Marshal(map[string]any{"bench": "cooperation_round", "rounds": 21,
		"with_app_ready_seconds": wr.Seconds(), "with_app_round_seconds": wd.Seconds(),
		"no_app_ready_seconds": nr.Seconds(), "no_app_round_seconds": nd.Seconds(),
		"round_ratio_with_over_without": wd.Seconds() / nd.Seconds()})
	fmt.Println(string(line))
}

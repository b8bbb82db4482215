package hostd_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/symvirt/symvirt/hostd"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// coopRounds is how many rounds each side of TestBenchCooperationRound runs.
const coopRounds = 21

// TestBenchCooperationRound is `make bench`'s line for one cooperation
// round (connect, PREPARE -> READY, ABORT -> DONE: a drill) on real QEMU,
// with the C hook application registered and without one, side by side.
//
// The application (examples/hook) works in 100 ms iterations and polls at
// their ends, its safe points: it needs up to 100 ms to reach one, which is
// its own time, not the round's. The guest measures it (from the round's
// start to the application's SYNC; see guestd/hooktiming.go) and reports it
// in READY, so the line gives the round, the application's own time and
// their difference, the overhead (target: at most 50 ms), each a median.
// Rounds are a few hundred ms apart, at random, as operations come: the
// guest sees the host leave between them, and the application's phase
// varies.
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
	rng := rand.New(rand.NewPCG(1, 2))
	var w, n coopSamples
	for range coopRounds {
		for _, vm := range []string{"withapp", "noapp"} {
			time.Sleep(time.Duration(150+rng.IntN(300)) * time.Millisecond)
			res, err := c.Drill(ctx, vm)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: round %v ready %v guest prepare %v apps %v", vm, res.Round, res.Ready, res.GuestPrepare, res.Apps)
			if vm == "withapp" {
				w.add(res)
			} else {
				n.add(res)
			}
		}
	}
	line, _ := json.Marshal(map[string]any{"bench": "cooperation_round", "rounds": coopRounds,
		"with_app_round_seconds": w.median(w.round), "with_app_ready_seconds": w.median(w.ready),
		"with_app_app_own_seconds": w.median(w.apps), "with_app_overhead_seconds": w.median(w.overhead),
		"with_app_overhead_max_seconds":  slices.Max(w.overhead).Seconds(),
		"with_app_guest_prepare_seconds": w.median(w.guest),
		"no_app_round_seconds":           n.median(n.round), "no_app_ready_seconds": n.median(n.ready),
		"no_app_guest_prepare_seconds": n.median(n.guest),
		"overhead_target_seconds":      0.050})
	fmt.Println(string(line))
}

// coopSamples are one side's rounds.
type coopSamples struct {
	round, ready, apps, guest, overhead []time.Duration
}

func (s *coopSamples) add(r hostd.DrillResult) {
	s.round = append(s.round, r.Round)
	s.ready = append(s.ready, r.Ready)
	s.apps = append(s.apps, r.Apps)
	s.guest = append(s.guest, r.GuestPrepare)
	s.overhead = append(s.overhead, r.Round-r.Apps)
}

func (s *coopSamples) median(d []time.Duration) float64 {
	d = slices.Clone(d)
	slices.Sort(d)
	return d[len(d)/2].Seconds()
}

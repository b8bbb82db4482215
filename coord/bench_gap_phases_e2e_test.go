package coord_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

// vmCut is what the hostds logged of one VM's part in a live job
// checkpoint, on the host's clock (zero: not logged).
type vmCut struct {
	fenced, point, liftFrom, lifted time.Time
	pause                           time.Duration
}

// cutEvents reads each VM's fence, point and lift from hostd logs.
func cutEvents(logs []string) map[string]*vmCut {
	cuts := map[string]*vmCut{}
	for _, l := range logs {
		sc := bufio.NewScanner(strings.NewReader(l))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e struct {
				Time, At, From time.Time
				Msg, VM        string
				Pause          time.Duration
			}
			if json.Unmarshal(sc.Bytes(), &e) != nil || e.VM == "" {
				continue
			}
			c := cuts[e.VM]
			if c == nil {
				c = &vmCut{}
				cuts[e.VM] = c
			}
			switch e.Msg {
			case "network fenced":
				c.fenced = e.At
			case "snapshot point taken":
				c.point, c.pause = e.Time, e.Pause
			case "network fence lifted":
				c.liftFrom, c.lifted = e.From, e.Time
			}
		}
	}
	return cuts
}

// gapPhases splits a VM's gap g that overlaps its fence c into where its
// time went, in ms: from the last answer to the fence going on (the
// prober's period and the fence's own QMP time), the fence to the VM's
// point (its snapshot's set-up and pause), its point to the job's last
// point (waiting for the other VMs), the last point to the start of the
// lift (the coordinator's round trip), the lift itself (QMP), and the
// lift to the next answer (the guest answering the held requests).
func gapPhases(g testenv.ProbeGap, c *vmCut, lastPoint time.Time) map[string]float64 {
	return map[string]float64{
		"answer_to_fence":     ms(c.fenced.Sub(g.From)),
		"fence_to_point":      ms(c.point.Sub(c.fenced)),
		"snapshot_pause":      ms(c.pause),
		"point_to_last_point": ms(lastPoint.Sub(c.point)),
		"last_point_to_lift":  ms(c.liftFrom.Sub(lastPoint)),
		"lift":                ms(c.lifted.Sub(c.liftFrom)),
		"lift_to_answer":      ms(g.To.Sub(c.lifted)),
	}
}

// lastPoint is the job's last snapshot point among cuts.
func lastPoint(cuts map[string]*vmCut) time.Time {
	var t time.Time
	for _, c := range cuts {
		if c.point.After(t) {
			t = c.point
		}
	}
	return t
}

// vmGapPhases reports a VM's gaps gs around its cut c: the longest one
// that overlaps its fence, split into phases, and the longest one after
// its fence lifted (the guest not answering while its stream runs).
func vmGapPhases(gs []testenv.ProbeGap, c *vmCut, last time.Time) map[string]any {
	if c != nil && c.fenced.IsZero() && !c.point.IsZero() {
		return pauseGapPhases(gs, c)
	}
	var fenced, after testenv.ProbeGap
	for _, g := range gs {
		switch {
		case c == nil || c.fenced.IsZero() || c.lifted.IsZero():
			after = longer(after, g)
		case g.From.After(c.lifted):
			after = longer(after, g)
		case !g.To.Before(c.fenced):
			fenced = longer(fenced, g)
		}
	}
	r := map[string]any{"after_lift_gap": ms(after.Len())}
	if c != nil && !after.From.IsZero() && !c.lifted.IsZero() {
		r["after_lift_gap_from_lift"] = ms(after.From.Sub(c.lifted))
	}
	if fenced.Len() > 0 {
		r["fence_gap"] = ms(fenced.Len())
		r["fence_gap_phases"] = gapPhases(fenced, c, last)
	}
	return r
}

// pauseGapPhases reports the gaps of a VM whose whole network was not
// fenced (a job-scoped fence): the longest one over its snapshot pause,
// split into the time to its stop, the pause and the time to the next
// answer, and the longest other one.
func pauseGapPhases(gs []testenv.ProbeGap, c *vmCut) map[string]any {
	stop := c.point.Add(-c.pause)
	var paused, other testenv.ProbeGap
	for _, g := range gs {
		if !g.To.Before(stop) && !g.From.After(c.point) {
			paused = longer(paused, g)
		} else {
			other = longer(other, g)
		}
	}
	r := map[string]any{"other_gap": ms(other.Len())}
	if paused.Len() > 0 {
		r["pause_gap"] = ms(paused.Len())
		r["pause_gap_phases"] = map[string]float64{"answer_to_stop": ms(stop.Sub(paused.From)),
			"snapshot_pause": ms(c.pause), "point_to_answer": ms(paused.To.Sub(c.point))}
	}
	return r
}

func longer(a, b testenv.ProbeGap) testenv.ProbeGap {
	if b.Len() > a.Len() {
		return b
	}
	return a
}

// phaseLine is vmGapPhases' report as one line, phases in order.
func phaseLine(r map[string]any) string {
	if p, ok := r["pause_gap_phases"].(map[string]float64); ok {
		return fmt.Sprintf("no whole-VM fence; gap over the pause %.1f ms = answer→stop %.1f + pause %.1f + point→answer %.1f;"+
			" longest other gap %.1f ms", r["pause_gap"], p["answer_to_stop"], p["snapshot_pause"], p["point_to_answer"], r["other_gap"])
	}
	if _, ok := r["other_gap"]; ok {
		return fmt.Sprintf("no whole-VM fence; no gap over the pause; longest gap %.1f ms", r["other_gap"])
	}
	s := fmt.Sprintf("after the lift: longest gap %.1f ms", r["after_lift_gap"])
	if f, ok := r["after_lift_gap_from_lift"]; ok {
		s += fmt.Sprintf(" (%+.1f ms from the lift)", f)
	}
	p, ok := r["fence_gap_phases"].(map[string]float64)
	if !ok {
		return s + "; no gap over the fence"
	}
	return fmt.Sprintf("fence gap %.1f ms = answer→fence %.1f + fence→point %.1f (pause %.1f) + point→last point %.1f"+
		" + last point→lift %.1f + lift %.1f + lift→answer %.1f; %s", r["fence_gap"], p["answer_to_fence"],
		p["fence_to_point"], p["snapshot_pause"], p["point_to_last_point"], p["last_point_to_lift"], p["lift"],
		p["lift_to_answer"], s)
}

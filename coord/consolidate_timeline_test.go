package coord_test

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

const stampMs = "15:04:05.000"

// moveEvent is one line of a hostd's log about a moved VM.
type moveEvent struct {
	Time     time.Time       `json:"time"`
	Msg      string          `json:"msg"`
	VM       string          `json:"vm"`
	Kind     string          `json:"kind"`
	Took     time.Duration   `json:"took"`
	Total    int64           `json:"total_ms"`
	Downtime int64           `json:"downtime_ms"`
	Frames   int             `json:"frames"`
	Unicast  int             `json:"unicast"`
	For      json.RawMessage `json:"for"` // a phase's name, or a duration
	host     string
}

// moveEvents are the hostds' log lines about the VMs results moved, by VM,
// in time order.
func (c *cluster) moveEvents(results []machine.Result) map[string][]moveEvent {
	out := map[string][]moveEvent{}
	for _, r := range results {
		for _, v := range r.VMs {
			out[v.Name] = nil
		}
	}
	for _, h := range c.names {
		for _, l := range strings.Split(c.hosts[h].Logs(), "\n") {
			var e moveEvent
			if json.Unmarshal([]byte(l), &e) != nil {
				continue
			}
			if evs, ok := out[e.VM]; ok {
				e.host = h
				out[e.VM] = append(evs, e)
			}
		}
	}
	for vm := range out {
		slices.SortFunc(out[vm], func(a, b moveEvent) int { return a.Time.Compare(b.Time) })
	}
	return out
}

// pauseOf is when QEMU paused the VM at the source for the last round of
// its latest move (its completion less its downtime).
func pauseOf(evs []moveEvent) time.Time {
	var at time.Time
	for _, ev := range evs {
		if ev.Msg == "migration stream complete" {
			at = ev.Time.Add(-time.Duration(ev.Downtime) * time.Millisecond)
		}
	}
	return at
}

// gapAround is the client's last answer before t and its first after,
// and when the first after's question was sent.
func (e *echoClient) gapAround(t time.Time) (start, end, asked time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	i, _ := slices.BinarySearchFunc(e.times, t, time.Time.Compare)
	if i == 0 || i == len(e.times) {
		return t, t, t
	}
	return e.times[i-1], e.times[i], e.sent[i]
}

// gapParts splits a moved VM's client's gap (from its last answer start to
// its first answer end, whose question went at asked) into: before the
// migration started (negative: it started earlier), pre-copy until the
// source paused, QEMU's downtime, from QEMU's completion to the cont at
// the destination, and from the cont to the answer; and says when the
// answer's question went, against the source's pause and the cont.
func gapParts(evs []moveEvent, start, end, asked time.Time) string {
	var began, done, cont time.Time
	var downtime time.Duration
	for _, ev := range evs {
		switch {
		case ev.Msg == "step" && ev.Kind == "migrate" && !ev.Time.Before(start):
			began = ev.Time.Add(-ev.Took)
		case ev.Time.Before(start):
		case ev.Msg == "migration stream complete" && done.IsZero():
			done, downtime = ev.Time, time.Duration(ev.Downtime)*time.Millisecond
		case ev.Msg == "running" && !done.IsZero() && cont.IsZero():
			cont = ev.Time
		}
	}
	if done.IsZero() || cont.IsZero() || began.IsZero() {
		return fmt.Sprintf("%v (no migrate step, completion or cont logged)", end.Sub(start).Round(time.Millisecond))
	}
	ms := func(d time.Duration) int64 { return d.Round(time.Millisecond).Milliseconds() }
	paused := done.Add(-downtime)
	// The service's share: from when it stopped answering (the source's
	// pause, or the question if it went earlier and waited) to the
	// answer; the rest is the client's own wait between questions.
	held := later(start, earliest(asked, paused))
	return fmt.Sprintf("service's gap %d ms (from %s to the answer); between answers %d ms = %d before the migration started + %d pre-copy until the source paused + %d QEMU's downtime"+
		" + %d from completion to cont + %d from cont to the answer; its question went %+d ms from the pause, %+d from the cont (round trip %d ms)",
		ms(end.Sub(held)), map[bool]string{true: "the source's pause", false: "its question"}[held.Equal(paused)],
		ms(end.Sub(start)), ms(began.Sub(start)), ms(paused.Sub(later(began, start))), ms(downtime), ms(cont.Sub(done)), ms(end.Sub(cont)),
		ms(asked.Sub(paused)), ms(asked.Sub(cont)), ms(end.Sub(asked)))
}

// logMoveTimelines logs, for every moved VM, where the gap its client saw
// around the move went: the client's last answer before the source's
// pause (QEMU's completion less its downtime), QEMU's completion, the
// steps' answers, the destination's cont, the frames the source passed
// on, and the client's first answer after, each as an offset from the
// last answer; and every step of the move, with the time it took.
func (c *cluster) logMoveTimelines(results []machine.Result, clients map[string]*echoClient) {
	var steps []string
	for vm, evs := range c.moveEvents(results) {
		start, end, asked := clients[vm].gapAround(pauseOf(evs))
		gap := end.Sub(start)
		at := func(t time.Time) string { return fmt.Sprintf("%+dms", t.Sub(start).Milliseconds()) }
		parts := []string{fmt.Sprintf("%s: gap around the move %v: last answer %s", vm, gap.Round(time.Millisecond), start.UTC().Format(stampMs))}
		for _, ev := range evs {
			if ev.Time.Before(start.Add(-5*time.Second)) || ev.Time.After(end.Add(5*time.Second)) {
				continue
			}
			what := ""
			switch {
			case ev.Msg == "migration stream complete":
				stop := ev.Time.Add(-time.Duration(ev.Downtime) * time.Millisecond)
				parts = append(parts, fmt.Sprintf("source paused %s (QEMU's downtime %d ms, total %d ms)", at(stop), ev.Downtime, ev.Total))
				what = fmt.Sprintf("QEMU completed the stream (total %d ms, downtime %d ms)", ev.Total, ev.Downtime)
				parts = append(parts, "stream completed "+at(ev.Time))
			case ev.Msg == "step" && ev.Kind == "migrate":
				parts = append(parts, fmt.Sprintf("migrate step started %s", at(ev.Time.Add(-ev.Took))), fmt.Sprintf("migrate@%s answered %s", ev.host, at(ev.Time)))
				what = fmt.Sprintf("migrate step done (took %v)", ev.Took.Round(time.Millisecond))
			case ev.Msg == "step" && (ev.Kind == "resume" || ev.Kind == "kill"):
				parts = append(parts, fmt.Sprintf("%s@%s answered %s", ev.Kind, ev.host, at(ev.Time)))
				what = fmt.Sprintf("%s step done (took %v)", ev.Kind, ev.Took.Round(time.Millisecond))
			case ev.Msg == "step":
				what = fmt.Sprintf("%s step done (took %v)", ev.Kind, ev.Took.Round(time.Millisecond))
			case ev.Msg == "boosted":
				parts = append(parts, "boosted at the destination "+at(ev.Time))
				what = "QEMU boosted"
			case ev.Msg == "guest told":
				parts = append(parts, "guest told "+at(ev.Time))
				what = ev.Msg
			case ev.Msg == "migration thread idle" || ev.Msg == "migration thread back to normal":
				what = ev.Msg
			case ev.Msg == "guest RAM populated" && string(ev.For) == `"bg_populate_ram_start"`:
				parts = append(parts, fmt.Sprintf("RAM file filled beside the VM from %s to %s", at(ev.Time.Add(-ev.Took)), at(ev.Time)))
				what = fmt.Sprintf("RAM file filled beside the VM (took %v)", ev.Took.Round(time.Millisecond))
			case ev.Msg == "running":
				parts = append(parts, "cont at the destination "+at(ev.Time))
				what = "cont: the VM runs"
			case ev.Msg == "frames re-sent":
				if !ev.Time.After(end) {
					parts = append(parts, fmt.Sprintf("%d frames (%d to the VM) passed on %s", ev.Frames, ev.Unicast, at(ev.Time)))
				}
				what = fmt.Sprintf("%d frames (%d to the VM) the paused source got passed on", ev.Frames, ev.Unicast)
			}
			if what != "" {
				steps = append(steps, fmt.Sprintf("%s %s host %s: %s", ev.Time.UTC().Format(stampMs), vm, ev.host, what))
			}
		}
		parts = append(parts, "its question sent "+at(asked), "first answer after "+at(end))
		c.t.Logf("timeline of %s", strings.Join(parts, ", "))
		c.t.Logf("gap of %s's client around its move: %s", vm, gapParts(evs, start, end, asked))
	}
	slices.Sort(steps)
	c.t.Logf("the moved VMs' steps:\n%s", strings.Join(steps, "\n"))
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// checkMoveTuning checks that each moved VM's migration thread went idle
// at its source and back before the last round, and that its QEMU was
// boosted at its destination, unless the run turned them off.
func (c *cluster) checkMoveTuning(results []machine.Result) {
	c.t.Helper()
	want := map[string]bool{}
	if os.Getenv("SYMVIRT_MIGRATION_IDLE_THREAD") != "false" {
		want["migration thread idle"], want["migration thread back to normal"] = true, true
	}
	if d := os.Getenv("SYMVIRT_MIGRATION_RESUME_BOOST"); d == "" || strings.Trim(d, "0smh") != "" {
		want["boosted"] = true
	}
	for vm, evs := range c.moveEvents(results) {
		for msg := range want {
			if !slices.ContainsFunc(evs, func(e moveEvent) bool { return e.Msg == msg }) {
				c.t.Errorf("%s moved without %q logged", vm, msg)
			}
		}
	}
}

package coord_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/symvirt/symvirt/coord/machine"
)

const stampMs = "15:04:05.000"

// moveEvent is one line of a hostd's log about a moved VM.
type moveEvent struct {
	Time     time.Time     `json:"time"`
	Msg      string        `json:"msg"`
	VM       string        `json:"vm"`
	Kind     string        `json:"kind"`
	Took     time.Duration `json:"took"`
	Total    int64         `json:"total_ms"`
	Downtime int64         `json:"downtime_ms"`
	Frames   int           `json:"frames"`
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

// logMoveTimelines logs, for every moved VM, where its client's longest
// gap of phase went: the client's last answer before it, the source's
// pause (QEMU's completion less its downtime), QEMU's completion, the
// migrate step's answer, the destination's cont, and the client's first
// answer after, each as an offset from the last answer; and every step
// of the move, with the time it took.
func (c *cluster) logMoveTimelines(results []machine.Result, clients map[string]*echoClient, phase int) {
	var steps []string
	for vm, evs := range c.moveEvents(results) {
		e := clients[vm]
		e.mu.Lock()
		end, gap := e.gapEnd[phase], e.gaps[phase]
		e.mu.Unlock()
		start := end.Add(-gap)
		at := func(t time.Time) string { return fmt.Sprintf("+%dms", t.Sub(start).Milliseconds()) }
		parts := []string{fmt.Sprintf("%s: gap %v: last answer %s", vm, gap.Round(time.Millisecond), start.UTC().Format(stampMs))}
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
			case ev.Msg == "step" && (ev.Kind == "migrate" || ev.Kind == "resume" || ev.Kind == "kill"):
				parts = append(parts, fmt.Sprintf("%s@%s answered %s", ev.Kind, ev.host, at(ev.Time)))
				what = fmt.Sprintf("%s step done (took %v)", ev.Kind, ev.Took.Round(time.Millisecond))
			case ev.Msg == "step":
				what = fmt.Sprintf("%s step done (took %v)", ev.Kind, ev.Took.Round(time.Millisecond))
			case ev.Msg == "running":
				parts = append(parts, "cont at the destination "+at(ev.Time))
				what = "cont: the VM runs"
			case ev.Msg == "frames re-sent":
				parts = append(parts, fmt.Sprintf("%d queued frames re-sent %s", ev.Frames, at(ev.Time)))
				what = fmt.Sprintf("%d frames queued at the source re-sent", ev.Frames)
			}
			if what != "" {
				steps = append(steps, fmt.Sprintf("%s %s host %s: %s", ev.Time.UTC().Format(stampMs), vm, ev.host, what))
			}
		}
		parts = append(parts, "first answer after "+at(end))
		c.t.Logf("timeline of %s", strings.Join(parts, ", "))
	}
	slices.Sort(steps)
	c.t.Logf("the moved VMs' steps:\n%s", strings.Join(steps, "\n"))
}

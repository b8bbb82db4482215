package scenario

import (
	"testing"
	"time"
)

func TestProbeStall(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	p := &probe{answers: map[string][]time.Time{
		"vm": {at(0), at(0.2), at(0.4), at(3.4), at(3.6), at(3.8), at(9)},
	}}
	cases := []struct {
		from, to float64
		want     time.Duration
	}{
		{1, 2, 3 * time.Second},     // the gap spans the whole window
		{0.3, 3.5, 3 * time.Second}, // the window holds the gap
		{3.5, 3.7, 200 * time.Millisecond},
		{3.7, 4, 5200 * time.Millisecond}, // up to the first answer after the window
		{-5, -4, 0},                       // nothing answered before it: nothing to measure from
	}
	for _, c := range cases {
		if got := p.stall("vm", at(c.from), at(c.to)); got != c.want {
			t.Errorf("stall [%v, %v] = %v, want %v", c.from, c.to, got, c.want)
		}
	}
	if got := p.stall("other", at(0), at(10)); got != 0 {
		t.Errorf("stall of a VM never probed = %v, want 0", got)
	}
}

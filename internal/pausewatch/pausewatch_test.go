package pausewatch

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writer stands for a guest's tick loop: tick appends n lines to f, one a
// period; pause(d) holds the writes for d and returns the instant in the
// middle of that hold.
type writer struct {
	f      *os.File
	period time.Duration
}

func (w writer) tick(t *testing.T, n int) {
	for range n {
		if _, err := w.f.WriteString("tick\n"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(w.period)
	}
}

func (w writer) pause(t *testing.T, d time.Duration) time.Time {
	start := time.Now()
	time.Sleep(d)
	mid := start.Add(time.Since(start) / 2)
	if _, err := w.f.WriteString("tick\n"); err != nil {
		t.Fatal(err)
	}
	return mid
}

// A pause shorter than a few ticks is still the gap At finds around it (a
// guest whose snapshot pause was 2 ms did pause), and an instant within
// the slack of two gaps gets the longer one, the pause.
func TestAtFindsAShortPause(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Millisecond))) }
	m := &GapMonitor{gaps: []Gap{{ms(0), ms(1)}, {ms(1), ms(2)}, {ms(2), ms(4)}, {ms(4), ms(5)}, {ms(5), ms(6)}}}
	for _, c := range []struct {
		at   float64
		want time.Duration
	}{
		{3, 2 * time.Millisecond},   // inside the 2 ms pause
		{4.5, 2 * time.Millisecond}, // in the next tick's gap, within the slack of the pause
		{0.5, time.Millisecond},     // a steady tick
		{9, 0},                      // after the watch
		{-2, 0},                     // before it
	} {
		if got := m.At(ms(c.at)); got != c.want {
			t.Errorf("At(%v ms) = %v, want %v", c.at, got, c.want)
		}
	}
}

// On a real file: a pause of the writer is a gap at least as long, the
// longest of the watch, and an instant of steady writes has its gap too.
func TestWatchGapsSeesAPause(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := writer{f: f, period: time.Millisecond}
	m := WatchGaps(path)
	w.tick(t, 10)
	steady := time.Now()
	w.tick(t, 10)
	long := w.pause(t, 40*time.Millisecond)
	w.tick(t, 20)
	longest := m.End()

	if got := m.At(long); got < 30*time.Millisecond {
		t.Errorf("At(a 40 ms pause) = %v, want ≥ 30ms", got)
	}
	if got := m.At(steady); got <= 0 {
		t.Errorf("At(while ticking) = %v, want the gap between two ticks", got)
	}
	if top := m.Longest(1); len(top) != 1 || top[0].Len() != longest || longest < 30*time.Millisecond {
		t.Errorf("Longest(1) = %v, End() = %v, want the 40 ms pause's gap", top, longest)
	}
}

// Package cliutil holds what the symvirt commands share: output in text or
// JSON, and progress on a terminal.
package cliutil

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Output writes a command's result as text or JSON.
type Output struct {
	JSON bool
	W    io.Writer
}

// New returns an Output for the --output flag value.
func New(format string) (Output, error) {
	switch format {
	case "", "text":
		return Output{W: os.Stdout}, nil
	case "json":
		return Output{JSON: true, W: os.Stdout}, nil
	}
	return Output{}, fmt.Errorf("--output %q: want text or json", format)
}

// Print writes v as JSON, or calls text to write it for a person.
func (o Output) Print(v any, text func(w io.Writer)) error {
	if o.JSON {
		enc := json.NewEncoder(o.W)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(o.W)
	return nil
}

// IsTerminal reports whether f is a character device (a terminal).
func IsTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Progress draws a one-line progress display on a terminal (stderr), and
// stays silent otherwise so scripts get clean output.
type Progress struct {
	mu    sync.Mutex
	on    bool
	w     io.Writer
	label string
	start time.Time
	drawn bool
}

// NewProgress returns a display for an operation called label.
func NewProgress(label string, enabled bool) *Progress {
	return &Progress{on: enabled && IsTerminal(os.Stderr), w: os.Stderr, label: label, start: time.Now()}
}

// Update redraws the line.
func (p *Progress) Update(phase string, transferred, total int64, mbps float64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf("%s: %-10s %6.1fs", p.label, phase, time.Since(p.start).Seconds())
	if transferred > 0 {
		line += fmt.Sprintf("  %s", Bytes(transferred))
		if total > 0 {
			line += fmt.Sprintf(" of %s", Bytes(total))
		}
		if mbps > 0 {
			line += fmt.Sprintf("  %.0f Mbit/s", mbps)
		}
	}
	fmt.Fprintf(p.w, "\r\033[K%s", line)
	p.drawn = true
}

// Done ends the display.
func (p *Progress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// Bytes formats a byte count.
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

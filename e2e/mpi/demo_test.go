package mpi_test

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/e2e/mpi/scenario"
)

// TestMPIDemo is `make demo`: the story of TestMPIJobThroughOperations
// told to a human. It runs only with SYMVIRT_DEMO_DIR set (scripts/demo
// sets it): the timeline, the pauses each rank saw and the checksums go to
// stdout, everything else (the test's log, every daemon's output, the VMs'
// consoles, pauses.json) to files in that directory. It fails if the
// checksums differ.
func TestMPIDemo(t *testing.T) {
	dir := os.Getenv("SYMVIRT_DEMO_DIR")
	if dir == "" {
		t.Skip("make demo runs this (SYMVIRT_DEMO_DIR unset)")
	}
	logf, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	out := os.Stdout
	fmt.Fprintf(out, "An MPI job (examples/mpi: %d ranks over 2 Debian VMs) through checkpoint, crash, restart,\n"+
		"migration and a node alert. Logs: %s\n\n", scenario.Ranks, logf.Name())
	tb := &demoTB{T: t, log: logf, dir: dir}
	c := scenario.NewCluster(tb)
	var s *scenario.Story
	defer func() {
		c.SaveLogs(dir)
		if s == nil {
			fmt.Fprintf(out, "\ndemo: stopped early, see %s\n", logf.Name())
		}
	}()
	s = scenario.Run(c, scenario.Options{Event: func(e scenario.Event) {
		fmt.Fprintf(out, "%7.1fs  %s\n", e.At.Seconds(), e.Text)
	}})
	scenario.WritePauses(tb, s.Reports, filepath.Join(dir, "pauses.json"))
	printStalls(out, s)
	printPauses(out, s)
	if s.Got != s.Want {
		fmt.Fprintf(out, "\nchecksum: undisturbed run %s, the job after all that %s: DIFFERENT\n", s.Want, s.Got)
		t.Fatalf("final checksum %s, undisturbed run %s", s.Got, s.Want)
	}
	fmt.Fprintf(out, "\nchecksum: undisturbed run %s = the job after all that %s: identical\n", s.Want, s.Got)
}

// printStalls prints, per operation, the longest time each VM did not
// answer on the network.
func printStalls(out io.Writer, s *scenario.Story) {
	fmt.Fprintf(out, "\nnetwork stall the job saw (longest gap between answers to probes every 0.2 s from host a):\n")
	fmt.Fprintf(out, "  %-16s %8s %8s %8s\n", "operation", "took", "vm1", "vm2")
	for _, op := range s.Ops {
		fmt.Fprintf(out, "  %-16s %7.1fs %7.1fs %7.1fs\n", op.Name, op.End.Sub(op.Start).Seconds(),
			op.Stall["vm1"].Seconds(), op.Stall["vm2"].Seconds())
	}
}

// printPauses prints the pauses each rank measured itself (its
// jacobi-pauses line: gaps between two iterations with a sync in them or
// longer than 0.5 s).
func printPauses(out io.Writer, s *scenario.Story) {
	fmt.Fprintf(out, "\npauses each rank saw (by its own clock, from its jacobi-pauses line):\n")
	fmt.Fprintf(out, "  %-4s %-4s %-5s %8s  %s\n", "rank", "vm", "iter", "paused", "operation -> outcome")
	for _, r := range s.Reports {
		for _, p := range r.Pauses {
			what := "no sync here (waiting for other ranks, or a slow step)"
			if p.Op != "" {
				what = p.Op + " -> " + p.Outcome
			}
			fmt.Fprintf(out, "  %-4d %-4s %-5d %7.2fs  %s\n", r.Rank, r.Host, p.Iter, p.Seconds, what)
		}
	}
}

// demoTB sends the test's log to the demo's log file; a failure's first
// line also goes to the test's own output.
type demoTB struct {
	*testing.T
	log io.Writer
	dir string
}

func (d *demoTB) Logf(format string, args ...any) {
	fmt.Fprintf(d.log, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func (d *demoTB) Log(args ...any) { d.Logf("%s", fmt.Sprint(args...)) }

func (d *demoTB) Errorf(format string, args ...any) {
	d.Logf("ERROR: "+format, args...)
	d.T.Errorf("%s (see %s)", firstLine(fmt.Sprintf(format, args...)), d.dir)
}

func (d *demoTB) Fatalf(format string, args ...any) {
	d.Logf("FATAL: "+format, args...)
	d.T.Fatalf("%s (see %s)", firstLine(fmt.Sprintf(format, args...)), d.dir)
}

func (d *demoTB) Fatal(args ...any) { d.Fatalf("%s", fmt.Sprint(args...)) }

func (d *demoTB) Error(args ...any) { d.Errorf("%s", fmt.Sprint(args...)) }

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

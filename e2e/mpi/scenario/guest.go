package scenario

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The run: 4096 points, 600 iterations, 20 ms of sleep per iteration so
// that the run lasts; it holds at iteration 500 until HoldFile is touched,
// so that every operation happens before the end.
var JacobiArgs = []string{"-n", "4096", "-i", "600"}

const (
	HoldFile = "/home/mpi/go"
	Ranks    = 4
)

// GuestJob is the MPI run, driven over ssh in the guest holding rank 0.
type GuestJob struct {
	C     *Cluster
	IP    string
	Lines int // output lines last seen
}

// Run runs command in the guest as user mpi; an error fails the test.
func (g *GuestJob) Run(command string) string {
	g.C.TB.Helper()
	out, err := g.C.SSH(g.IP, 60*time.Second, command)
	if err != nil {
		g.C.DumpGuests()
		g.C.TB.Fatalf("ssh mpi@%s %q: %v\n%s", g.IP, command, err, out)
	}
	return out
}

// Start starts the run in the background (jacobi-job: mpirun over ssh,
// output in ~/jacobi.out) on hosts ("ip:slots,...").
func (g *GuestJob) Start(hosts string) {
	cmd := fmt.Sprintf("jacobi-job %s %d %s -d 20 -H 500 -f %s", hosts, Ranks, strings.Join(JacobiArgs, " "), HoldFile)
	g.C.TB.Logf("ssh mpi@%s %s", g.IP, cmd)
	g.Run(cmd)
}

var iterRE = regexp.MustCompile(`jacobi-iter (\d+)`)

// WaitIter waits until rank 0 reported iteration n.
func (g *GuestJob) WaitIter(n int) {
	g.C.TB.Helper()
	g.Wait(fmt.Sprintf("iteration %d", n), func(out string) bool {
		m := iterRE.FindAllStringSubmatch(out, -1)
		if len(m) == 0 {
			return false
		}
		it, _ := strconv.Atoi(m[len(m)-1][1])
		return it >= n
	})
}

// WaitProgress waits until the run printed two more lines (iterations, or
// rounds of holding: either needs every rank to take part).
func (g *GuestJob) WaitProgress() {
	g.C.TB.Helper()
	since := g.Lines
	g.Wait("progress", func(out string) bool { return strings.Count(out, "\n") >= since+2 })
}

// Wait polls the run's output until done accepts it; the run's end or
// failure, or 3 minutes, fail the test.
func (g *GuestJob) Wait(what string, done func(string) bool) {
	g.C.TB.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out := g.Run("cat jacobi.out")
		g.Lines = strings.Count(out, "\n")
		if done(out) {
			return
		}
		if strings.Contains(out, "jacobi-done") || strings.Contains(out, "ORTE") ||
			strings.Contains(out, "MPI_ABORT") || time.Now().After(deadline) {
			g.C.DumpGuests()
			g.C.TB.Fatalf("waiting for %s of the MPI run:\n%s", what, Tail(out, 4000))
		}
		time.Sleep(time.Second)
	}
}

// Finish lets the run end and returns its output.
func (g *GuestJob) Finish() string {
	g.Run("touch " + HoldFile)
	g.Wait("the end", func(out string) bool { return strings.Contains(out, "jacobi-done") })
	return g.Run("cat jacobi.out")
}

// ClockOffset is how far the guest's clock is from the host's, in seconds
// (0 when the guest's reading falls within the ssh round trip).
func (g *GuestJob) ClockOffset() float64 {
	g.C.TB.Helper()
	before := time.Now()
	out := g.Run("date +%s.%N")
	after := time.Now()
	sec, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		g.C.TB.Fatalf("guest date: %q", out)
	}
	guest := time.Unix(0, int64(sec*1e9))
	off := 0.0
	if guest.Before(before) {
		off = guest.Sub(before).Seconds()
	} else if guest.After(after) {
		off = guest.Sub(after).Seconds()
	}
	g.C.TB.Logf("guest clock: %+.3fs off the host's (ssh took %.2fs)", off, after.Sub(before).Seconds())
	return off
}

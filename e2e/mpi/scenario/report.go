package scenario

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

var checksumRE = regexp.MustCompile(`jacobi-checksum ([0-9a-f]{16})`)

// Checksum is the run's final checksum; none fails the test.
func Checksum(t testing.TB, out string) string {
	t.Helper()
	m := checksumRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no checksum in the output:\n%s", Tail(out, 3000))
	}
	return m[1]
}

// UndisturbedChecksum runs the C example on the test host, without an
// agent (the hook is then a no-op).
func UndisturbedChecksum(t testing.TB) string { return UndisturbedRun(t, "mpi", "jacobi") }

// UndisturbedRun builds examples/EXAMPLE and runs its binary as the job's
// ranks on the test host, without an agent, and returns its checksum.
func UndisturbedRun(t testing.TB, example, binary string) string {
	dir := filepath.Join(testenv.RepoRoot(t), "examples", example)
	if out, err := exec.Command("make", "-s", "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("make -C examples/%s: %v\n%s", example, err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--allow-run-as-root", "--oversubscribe", "-np", strconv.Itoa(Ranks),
		filepath.Join(dir, binary)}, JacobiArgs...)
	cmd := exec.CommandContext(ctx, "mpirun", args...)
	cmd.Env = append(os.Environ(), "SYMVIRT_HOOK_SOCKET=/nonexistent/hook.sock")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mpirun %v: %v\n%s", args, err, out)
	}
	sum := Checksum(t, string(out))
	t.Logf("undisturbed run (mpirun -np %d %s on the test host): checksum %s", Ranks, binary, sum)
	return sum
}

// Pause is one pause a rank measured between two iteration boundaries.
type Pause struct {
	Iter    int     `json:"iter"`
	At      float64 `json:"at"` // Unix seconds, the guest's clock
	Seconds float64 `json:"seconds"`
	Op      string  `json:"op"`
	Outcome string  `json:"outcome"`
}

// RankReport is one rank's "jacobi-pauses" line.
type RankReport struct {
	Rank       int     `json:"rank"`
	Host       string  `json:"host"`
	Iterations int     `json:"iterations"`
	Pauses     []Pause `json:"pauses"`
}

// ParsePauses reads every rank's report from the run's output; fewer than
// Ranks fail the test.
func ParsePauses(t testing.TB, out string) []RankReport {
	t.Helper()
	var reports []RankReport
	for _, l := range strings.Split(out, "\n") {
		js, ok := strings.CutPrefix(strings.TrimSpace(l), "jacobi-pauses ")
		if !ok {
			continue
		}
		var r RankReport
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			t.Fatalf("rank report %q: %v", js, err)
		}
		reports = append(reports, r)
		for _, p := range r.Pauses {
			t.Logf("rank %d (%s) iteration %d: paused %.2fs at %s %s %s", r.Rank, r.Host, p.Iter, p.Seconds,
				time.Unix(0, int64(p.At*1e9)).UTC().Format("15:04:05.000"), p.Op, p.Outcome)
		}
	}
	if len(reports) != Ranks {
		t.Fatalf("%d rank reports, want %d:\n%s", len(reports), Ranks, Tail(out, 3000))
	}
	return reports
}

// WritePauses writes the reports, as JSON, to file.
func WritePauses(t testing.TB, reports []RankReport, file string) {
	data, _ := json.MarshalIndent(reports, "", "  ")
	os.MkdirAll(filepath.Dir(file), 0o755)
	if err := os.WriteFile(file, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("pauses: %s", file)
}

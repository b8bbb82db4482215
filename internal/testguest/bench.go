package testguest

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// BenchSizes returns the sizes a benchmark runs: def, or the
// comma-separated list in environment variable env (to compare settings
// quickly on one size), each from lo to hi; anything else fails the test.
func BenchSizes(t testing.TB, env string, def []int, lo, hi int) []int {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	var sizes []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < lo || n > hi {
			t.Fatalf("%s=%q: want sizes from %d to %d, comma-separated", env, v, lo, hi)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// BusyLoops starts perCore shell busy loops per CPU at nice 0, standing for
// guests that keep a host's cores busy, and returns what stops them.
func BusyLoops(t testing.TB, perCore int) (stop func()) {
	t.Helper()
	var loops []*exec.Cmd
	stop = func() {
		for _, c := range loops {
			c.Process.Kill()
			c.Wait()
		}
		loops = nil
	}
	for range perCore * runtime.NumCPU() {
		c := exec.Command("sh", "-c", "while :; do :; done")
		if err := c.Start(); err != nil {
			stop()
			t.Fatal(err)
		}
		loops = append(loops, c)
	}
	return stop
}

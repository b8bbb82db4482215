package testguest

import (
	"os"
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

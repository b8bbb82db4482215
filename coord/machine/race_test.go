//go:build race

package machine

// The race detector makes the randomized test ~10x slower; it runs fewer
// rounds under it (the machine has no concurrency of its own).
const raceEnabled = true

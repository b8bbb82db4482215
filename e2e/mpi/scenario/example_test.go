package scenario

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// examples/mpi/job.yaml is the job the demo runs: the same file as
// JobYAML builds, but for the image path and the host names.
func TestExampleJobIsTheDemos(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "examples", "mpi", "job.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.SplitAfter(string(data), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	c := &Cluster{Image: "/srv/images/symvirt-mpi", TB: t}
	if got, want := strings.Join(lines, ""), c.JobYAML("mpi", false, "node1", "node2"); got != want {
		t.Fatalf("examples/mpi/job.yaml is not the demo's job:\n%s\nwant:\n%s", got, want)
	}
}

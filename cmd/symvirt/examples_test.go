package main

import (
	"path/filepath"
	"testing"

	"github.com/symvirt/symvirt/hostd"
)

// The files in examples/ are usable as they are: each loads with the
// parser that reads it in production, strict about unknown fields.
func TestExamplesLoad(t *testing.T) {
	dir := filepath.Join("..", "..", "examples")
	if _, err := hostd.LoadSpec(filepath.Join(dir, "vm.yaml")); err != nil {
		t.Errorf("examples/vm.yaml: %v", err)
	}
	if _, err := hostd.LoadConfig(filepath.Join(dir, "host.yaml")); err != nil {
		t.Errorf("examples/host.yaml: %v", err)
	}
	j, err := loadJob(filepath.Join(dir, "job.yaml"))
	if err != nil {
		t.Fatalf("examples/job.yaml: %v", err)
	}
	if j.Name == "" || len(j.VMs) != 2 {
		t.Errorf("examples/job.yaml: job %q with %d VMs, want mpi-job with 2", j.Name, len(j.VMs))
	}
	if _, err := loadJob(filepath.Join(dir, "mpi", "job.yaml")); err != nil {
		t.Errorf("examples/mpi/job.yaml: %v", err)
	}
}

package machine

import (
	"fmt"
	"os"
	"testing"

	"github.com/symvirt/symvirt/internal/benchline"
)

// BenchmarkCheckpoint1000VMs drives one checkpoint of 1,000 simulated VMs
// on 100 simulated hosts through the machine, every result OK, answering
// actions in the order they were emitted. ns/op is the machine's cost for
// the whole operation (about 7,000 actions and results).
func BenchmarkCheckpoint1000VMs(b *testing.B) {
	vms := make([]VM, 1000)
	for i := range vms {
		vms[i] = VM{Name: fmt.Sprintf("vm%04d", i), Host: fmt.Sprintf("host%03d", i%100)}
	}
	opts := Options{CheckpointID: "ck-bench"}
	var actions int
	b.ReportAllocs()
	for b.Loop() {
		o, queue, err := New("op-bench", KindCheckpoint, "job-bench", vms, opts, t0)
		if err != nil {
			b.Fatal(err)
		}
		actions = 0
		for len(queue) > 0 {
			a := queue[0]
			queue = queue[1:]
			actions++
			r := ActionResult{ID: a.ID, OK: true, Now: t0}
			if a.Type == Save {
				r.Digest = "sha256:" + a.VM
			}
			queue = append(queue, o.Step(r)...)
		}
		if !o.Done() || o.Outcome != OutcomeCheckpointed {
			b.Fatalf("not checkpointed: %s", o.Phase)
		}
	}
	b.ReportMetric(float64(actions), "actions/op")
}

// TestBenchControlPlane is `make bench`'s JSON line for the control plane:
// one checkpoint round of 1,000 simulated VMs on 100 simulated hosts
// through the state machine, excluding QEMU and RPCs.
func TestBenchControlPlane(t *testing.T) {
	if os.Getenv("SYMVIRT_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	r := testing.Benchmark(BenchmarkCheckpoint1000VMs)
	benchline.Print(map[string]any{"bench": "coord_checkpoint_round", "vms": 1000, "hosts": 100,
		"seconds_per_round": float64(r.NsPerOp()) / 1e9, "rounds": r.N,
		"actions_per_round": r.Extra["actions/op"], "allocs_per_round": r.AllocsPerOp()})
}

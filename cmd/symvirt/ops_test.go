package main

import (
	"strings"
	"testing"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/coord/machine"
)

// Each operation's first line says what it did: a restart names the
// checkpoint it restored from (never "(checkpoint ID: )"), a checkpoint
// its ID and whether it is complete; lost and stranded VMs say what to do.
func TestOperationResultLines(t *testing.T) {
	for _, tc := range []struct {
		res  machine.Result
		want []string
		not  []string
	}{
		{machine.Result{Op: "o", Kind: machine.KindRestart, Job: "j1", Outcome: "restored", CheckpointID: "j1-20260101",
			VMs: []machine.VMResult{{Name: "vm1", Host: "a", Outcome: "restored"}}},
			[]string{"restart of job j1 from checkpoint j1-20260101: restored\n", "vm1  a     restored"}, []string{"(checkpoint", ": )"}},
		{machine.Result{Op: "o", Kind: machine.KindCheckpoint, Job: "j1", Outcome: "checkpointed", CheckpointID: "j1-2", Checkpoint: "complete"},
			[]string{"checkpoint of job j1: checkpointed, checkpoint j1-2 complete\n"}, nil},
		{machine.Result{Op: "o", Kind: machine.KindMigrate, Job: "j1", Outcome: "migrated", Lost: []string{"vm2"}, Stranded: []string{"vm3"}},
			[]string{"migrate of job j1: migrated\n", "lost (their host went down; symvirt restart j1): vm2", "stranded (a closing step kept failing; see ERROR): vm3"}, nil},
	} {
		var b strings.Builder
		printOpResult(&b, tc.res)
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("want %q in:\n%s", w, b.String())
			}
		}
		for _, n := range tc.not {
			if strings.Contains(b.String(), n) {
				t.Errorf("%q in:\n%s", n, b.String())
			}
		}
	}
}

// ops show names a live checkpoint's network fence, and when a job-scoped
// one fell back, the fence it got and why.
func TestOpViewShowsTheNetworkFence(t *testing.T) {
	for _, tc := range []struct {
		scope, fallback, want string
	}{
		{"job", "", "  network fence: job\n"},
		{"all", "", "  network fence: all\n"},
		{"job", "vm vm2 nic n0 has no mac", "  network fence: all (asked: job; vm vm2 nic n0 has no mac)\n"},
		{"", "", ""},
	} {
		var b strings.Builder
		printOpView(&b, coord.OpView{ID: "op-1", Kind: "checkpoint", Job: "j", NetworkFence: tc.scope, FenceFallback: tc.fallback})
		if got := b.String(); tc.want != "" && !strings.Contains(got, tc.want) || tc.want == "" && strings.Contains(got, "network fence") {
			t.Errorf("scope %q fallback %q:\n%s\nwant %q", tc.scope, tc.fallback, got, tc.want)
		}
	}
}

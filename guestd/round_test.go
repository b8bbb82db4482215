package guestd

import "testing"

func TestRoundHappyPath(t *testing.T) {
	var r round
	if a, _ := r.onPrepare("r1", "checkpoint"); a != actStart || r.phase != phasePreparing {
		t.Fatalf("PREPARE from idle: %v, phase %v", a, r.phase)
	}
	if id, _ := r.pending(); id != "" {
		t.Errorf("pending while preparing: %q", id)
	}
	if err := r.prepared("r1", true); err != nil || r.phase != phaseReady {
		t.Fatalf("prepared: %v, phase %v", err, r.phase)
	}
	if id, op := r.pending(); id != "r1" || op != "checkpoint" {
		t.Errorf("pending = %q %q", id, op)
	}
	if a := r.onResume("r1"); a != actStart || r.phase != phaseFinishing {
		t.Fatalf("RESUME when ready: %v, phase %v", a, r.phase)
	}
	if a := r.onResume("r1"); a != actIgnore {
		t.Errorf("duplicate RESUME while finishing: %v", a)
	}
	if err := r.finished("r1", "restored"); err != nil || r.phase != phaseIdle || r.lastID != "r1" {
		t.Fatalf("finished: %v, %+v", err, r)
	}
	if a := r.onResume("r1"); a != actDone {
		t.Errorf("RESUME of a finished round: %v, want done", a)
	}
}

func TestRoundTransitions(t *testing.T) {
	at := func(p phase) *round { return &round{phase: p, id: "r1", op: "migrate"} }
	cases := []struct {
		name      string
		r         *round
		msg       string // PREPARE, RESUME, ABORT
		id        string
		want      action
		wantPhase phase
	}{
		{"dup PREPARE while preparing", at(phasePreparing), "PREPARE", "r1", actIgnore, phasePreparing},
		{"dup PREPARE when ready", at(phaseReady), "PREPARE", "r1", actReady, phaseReady},
		{"other PREPARE while preparing", at(phasePreparing), "PREPARE", "r2", actRefuse, phasePreparing},
		{"other PREPARE when ready", at(phaseReady), "PREPARE", "r2", actRefuse, phaseReady},
		{"PREPARE while finishing", at(phaseFinishing), "PREPARE", "r1", actRefuse, phaseFinishing},
		{"ABORT while preparing", at(phasePreparing), "ABORT", "r1", actCancelPrp, phasePreparing},
		{"ABORT when ready", at(phaseReady), "ABORT", "r1", actStart, phaseFinishing},
		{"ABORT while finishing", at(phaseFinishing), "ABORT", "r1", actIgnore, phaseFinishing},
		{"ABORT of another round", at(phaseReady), "ABORT", "r9", actDone, phaseReady},
		{"ABORT when idle", &round{}, "ABORT", "r1", actDone, phaseIdle},
		{"RESUME before READY", at(phasePreparing), "RESUME", "r1", actCancelPrp, phasePreparing},
		{"RESUME of another round", at(phaseReady), "RESUME", "r9", actDone, phaseReady},
		{"RESUME when idle", &round{}, "RESUME", "r1", actDone, phaseIdle},
	}
	for _, c := range cases {
		var got action
		switch c.msg {
		case "PREPARE":
			got, _ = c.r.onPrepare(c.id, "checkpoint")
		case "RESUME":
			got = c.r.onResume(c.id)
		case "ABORT":
			got = c.r.onAbort(c.id)
		}
		if got != c.want || c.r.phase != c.wantPhase {
			t.Errorf("%s: action %v phase %v, want %v phase %v", c.name, got, c.r.phase, c.want, c.wantPhase)
		}
	}
}

func TestRoundRefusedPrepare(t *testing.T) {
	var r round
	r.onPrepare("r1", "checkpoint")
	if err := r.prepared("r1", false); err != nil || r.phase != phaseFinishing {
		t.Fatalf("failed prepare: %v, phase %v", err, r.phase)
	}
	if id, _ := r.pending(); id != "" {
		t.Error("a refused round is reported pending")
	}
	if err := r.finished("r1", "aborted"); err != nil || r.phase != phaseIdle {
		t.Fatal(err)
	}
	if a, _ := r.onPrepare("r2", "checkpoint"); a != actStart {
		t.Errorf("next PREPARE: %v", a)
	}
}

func TestRoundRejectsOutOfOrderWork(t *testing.T) {
	var r round
	if err := r.prepared("r1", true); err == nil {
		t.Error("prepared while idle accepted")
	}
	r.onPrepare("r1", "checkpoint")
	if err := r.finished("r1", "restored"); err == nil {
		t.Error("finished while preparing accepted")
	}
	if err := r.prepared("r2", true); err == nil {
		t.Error("prepared of another round accepted")
	}
}

package machine

import "testing"

// TestCopyStorageOnlyForMigrations: CopyStorage is a migration's option;
// New refuses it on any other kind, and only Migrate actions carry it.
func TestCopyStorageOnlyForMigrations(t *testing.T) {
	for _, kind := range []Kind{KindCheckpoint, KindRestart, KindRejuvenate} {
		_, _, err := New("op1", kind, "job1", []VM{{Name: "a", Host: "h1", Dest: "h2"}},
			Options{CheckpointID: "ck1", CopyStorage: true}, t0)
		if err == nil {
			t.Errorf("%s with CopyStorage was accepted", kind)
		}
	}
	h := start(t, KindEvacuate, []VM{{Name: "a", Host: "h1", Dest: "h2"}}, Options{Live: true, CopyStorage: true})
	h.answerAll(Prepare, true)
	h.answerAll(Detach, true)
	if h.count(Migrate) != 1 {
		t.Fatalf("want one Migrate, got %d", h.count(Migrate))
	}
	for _, a := range h.log {
		if a.CopyStorage != (a.Type == Migrate) {
			t.Errorf("%s carries CopyStorage=%v", a.Type, a.CopyStorage)
		}
	}
}

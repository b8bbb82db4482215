package hostd_test

import (
	"regexp"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testenv"
)

// TestDrillReportsAppTime: a drill of a guest with the C hook application
// registered reports the application's own time to reach its safe point
// (the hook works in 100 ms iterations and syncs at their ends: never
// instantly), within the guest's prepare time; after the host left the
// guest idle a while (the port read EOF meanwhile), the next drill is still
// answered.
func TestDrillReportsAppTime(t *testing.T) {
	h := testenv.StartHostd(t, "a", nil, "", "")
	ctx := ctxT(t, 5*time.Minute)
	c := h.Client()
	if _, err := c.Create(ctx, coopSpec(t, "drill", "", nil), true); err != nil {
		t.Fatal(err)
	}
	waitLog(t, serialLog(h, "drill"), regexp.MustCompile(`hook: registered`), 90*time.Second)
	for i := range 2 {
		time.Sleep(time.Second)
		res, err := c.Drill(ctx, "drill")
		if err != nil {
			t.Fatalf("drill %d: %v", i, err)
		}
		t.Logf("drill %d: %+v", i, res)
		if res.Apps <= 0 || res.Apps > res.GuestPrepare {
			t.Errorf("drill %d: application time %v, guest prepare %v: want 0 < apps <= guest prepare", i, res.Apps, res.GuestPrepare)
		}
	}
}

package coord_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/coord"
	"github.com/symvirt/symvirt/internal/testenv"
	"github.com/symvirt/symvirt/internal/testguest"
)

// A schedule of a real job (one VM under a real hostd) every 2s keeping 2:
// the coordinator checkpoints it again and again and keeps exactly the 2
// newest complete checkpoints (the others' files deleted by the hostd); a
// coordinator killed with -9 and started again goes on with the schedule
// from its store; `symvirt jobs` shows the age of the newest checkpoint
// and the coordinator's metrics export it.
func TestScheduleKeepsNAcrossCoordRestart(t *testing.T) {
	testenv.RequireRoot(t)
	kernel, initrd := testguest.Paths(t)
	h := testenv.StartHostd(t, "a", nil, "", "")
	ckDir := t.TempDir()
	metrics := freeLoopback(t)
	c := testenv.StartCoord(t, nil, ckDir, nil, "--metrics-address", metrics)
	job := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(job, []byte(fmt.Sprintf(`name: js
vms:
  - name: vm1
    host: a
    spec: {memory: 128M, vcpus: 1, kernel: %s, initrd: %s, append: "console=ttyS0 quiet"}
`, kernel, initrd)), 0o600)
	cli := func(args ...string) string {
		t.Helper()
		out, err := c.CLI(t, args...)
		if err != nil {
			t.Fatalf("symvirt %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	cli("hosts", "add", "a", h.Socket())
	cli("jobs", "create", "-f", job)
	if out := cli("jobs"); !strings.Contains(out, "js\tvm1@a\tno complete checkpoint") {
		t.Errorf("jobs before any checkpoint:\n%s", out)
	}
	out := cli("schedule", "js", "--every", "2s", "--keep", "2")
	if !strings.Contains(out, "job js: a checkpoint every 2s, keeping the 2 newest complete ones") {
		t.Errorf("schedule:\n%s", out)
	}

	s := waitKept(t, c, 2, func(s coord.Schedule) bool { return s.Runs-s.Failed >= 4 && s.Pruned >= 2 })
	t.Logf("before the restart: %+v", s)
	if out := cli("jobs"); !strings.Contains(out, "js\tvm1@a\tlast checkpoint ") || !strings.Contains(out, " ago (js-") {
		t.Errorf("jobs: no age of the last checkpoint:\n%s", out)
	}
	var infos []coord.JobInfo
	json.Unmarshal([]byte(cli("jobs", "-o", "json")), &infos)
	if len(infos) != 1 || infos[0].LastCheckpoint == nil || !strings.HasPrefix(infos[0].LastCheckpoint.ID, "js-") {
		t.Errorf("jobs -o json: no last_checkpoint: %+v", infos)
	}
	if body := get(t, "http://"+metrics+"/metrics"); !strings.Contains(body, `symvirt_coord_job_last_checkpoint_age_seconds{job="js"} `) ||
		!strings.Contains(body, `symvirt_coord_schedule_ticks_total{job="js",result="complete"} `) {
		t.Errorf("metrics: no checkpoint age or schedule ticks for js:\n%.3000s", body)
	}

	c.Kill()
	assertNoOrphanFiles(t, c.StateDir, ckDir)
	c.Start()
	if out := cli("schedule", "list"); !strings.Contains(out, "js ") {
		t.Fatalf("the schedule is gone after a restart:\n%s", out)
	}
	after := waitKept(t, c, 2, func(x coord.Schedule) bool { return x.Runs-x.Failed >= s.Runs-s.Failed+2 && x.Pruned > s.Pruned })
	t.Logf("after the restart: %+v", after)

	cli("schedule", "rm", "js")
	if out := cli("schedule", "list"); !strings.Contains(out, "no schedules") {
		t.Errorf("schedule list after rm:\n%s", out)
	}
}

// waitKept polls until the job's schedule satisfies done while the catalog
// holds exactly keep complete checkpoints of js.
func waitKept(t *testing.T, c *testenv.Coord, keep int, done func(coord.Schedule) bool) coord.Schedule {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		var scheds []coord.Schedule
		out, _ := c.CLI(t, "schedule", "list", "-o", "json")
		json.Unmarshal([]byte(out), &scheds)
		var cks []coord.Checkpoint
		out, _ = c.CLI(t, "checkpoints", "-o", "json")
		json.Unmarshal([]byte(out), &cks)
		n := 0
		for _, ck := range cks {
			if ck.Job == "js" && ck.Status == "complete" {
				n++
			}
		}
		if n > keep+1 {
			t.Fatalf("%d complete checkpoints of js, keep %d:\n%s", n, keep, out)
		}
		if len(scheds) == 1 && n == keep && done(scheds[0]) {
			return scheds[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the schedule did not get there (%d complete): %+v\n%s", n, scheds, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// assertNoOrphanFiles: with the coordinator stopped, every checkpoint with
// files on disk is one the catalog knows (retention deleted the files of
// what it dropped).
func assertNoOrphanFiles(t *testing.T, stateDir, ckDir string) {
	t.Helper()
	st, err := coord.OpenBolt(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	known := map[string]bool{}
	st.List("checkpoints", func(k string, _ []byte) error { known[k] = true; return nil })
	entries, _ := os.ReadDir(ckDir)
	kept := 0
	for _, e := range entries {
		// The hostd deletes each VM's directory; the checkpoint's own
		// directory may stay, empty.
		vms, _ := os.ReadDir(filepath.Join(ckDir, e.Name()))
		if len(vms) > 0 {
			kept++
		}
		if len(vms) > 0 && !known[e.Name()] {
			t.Errorf("checkpoint files %s/%s are in no catalog entry (catalog: %v)", e.Name(), vms[0].Name(), known)
		}
	}
	if kept < 2 {
		t.Errorf("checkpoint dir holds %d checkpoints with files, want at least 2", kept)
	}
}

func freeLoopback(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) string {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
